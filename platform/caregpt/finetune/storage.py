"""The storage root: uploaded files and job folders on a local disk or any pyarrow filesystem (s3://, gs://, ...).

Paths inside the root are built here from ids the service generated (``file-...``, ``ftjob-...``), never from
request text. A Ray job on another node reads the same root, so a URI root (object storage) works across a
cluster; a local root suits one machine or a shared mount.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

import pyarrow.fs as pafs

CHUNK = 1 << 20


class Storage:
    def __init__(self, root: str):
        self.uri = root
        if "://" in root:
            self.fs, base = pafs.FileSystem.from_uri(root)
        else:
            self.fs, base = pafs.LocalFileSystem(), str(Path(root).expanduser().resolve())
        self.base = base.rstrip("/")
        self.fs.create_dir(self.base, recursive=True)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def uri_of(self, *parts: str) -> str:
        """What a Ray job is given to find the same object (a local path, or the URI)."""
        if self.is_local:
            return self.path(*parts)
        return self.uri.rstrip("/") + "/" + "/".join(parts)

    def write_stream(self, relative: str, source: BinaryIO) -> int:
        """Copy `source` to `relative` (through a temporary name, so a half-written file is never visible)."""
        target = self.path(relative)
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        partial = target + ".partial"
        size = 0
        with self.fs.open_output_stream(partial) as out:
            while chunk := source.read(CHUNK):
                out.write(chunk)
                size += len(chunk)
        self.fs.move(partial, target)
        return size

    def write_bytes(self, relative: str, data: bytes) -> None:
        import io

        self.write_stream(relative, io.BytesIO(data))

    def read_bytes(self, relative: str) -> bytes:
        with self.fs.open_input_stream(self.path(relative)) as handle:
            return handle.read()

    def exists(self, relative: str) -> bool:
        return self.fs.get_file_info(self.path(relative)).type != pafs.FileType.NotFound

    def delete(self, relative: str) -> None:
        info = self.fs.get_file_info(self.path(relative))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(relative))
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path(relative))

    def download_files(self, relative: str, local: Path, keep) -> list[str]:
        """The files directly inside a folder of the root whose names pass `keep`, copied into a local folder."""
        local.mkdir(parents=True, exist_ok=True)
        copied = []
        for info in self.fs.get_file_info(pafs.FileSelector(self.path(relative), recursive=False)):
            if info.type == pafs.FileType.File and keep(info.base_name):
                with self.fs.open_input_stream(info.path) as src, open(local / info.base_name, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                copied.append(info.base_name)
        return copied


def fetch(uri: str, local: Path) -> Path:
    """A file or folder at `uri` (local path or URI) available locally (copied when remote)."""
    if "://" not in uri:
        return Path(uri)
    fs, path = pafs.FileSystem.from_uri(uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        local.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(path, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    else:
        local.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(path) as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
    return local


def push_dir(local: Path, uri: str) -> None:
    """A local folder copied to `uri` (nothing to do when `uri` is that same local folder)."""
    if "://" not in uri:
        if Path(uri).resolve() != local.resolve():
            shutil.copytree(local, uri, dirs_exist_ok=True)
        return
    fs, path = pafs.FileSystem.from_uri(uri)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="caregpt-ft-"))
