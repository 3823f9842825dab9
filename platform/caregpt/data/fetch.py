"""Resumable, verified HTTP(S) downloads for `caregpt data download`.

A file arrives as ``DEST.part``; a cut connection, or a run stopped with Ctrl-C, leaves the ``.part`` behind, and
the next attempt asks for the rest with an HTTP ``Range: bytes=N-`` request (a server that ignores ranges sends the
whole file again, and the ``.part`` restarts from zero). Within one run a cut connection is retried ``retries``
times. When the file is complete its sha256 is computed: a pinned hash that differs is refused and the file is
removed (keeping it would let a later resume append to bad bytes); with no pinned hash the computed one is
reported, for the user to check and pin. Only then is ``.part`` renamed to ``DEST``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 16
USER_AGENT = "caregpt-data-download"


class DownloadError(RuntimeError):
    """A download that cannot complete (HTTP error, too many cut connections, a sha256 mismatch)."""


@dataclass
class Fetched:
    path: Path
    sha256: str
    size: int
    resumed_from: int  # bytes already on disk (a .part) when this run started; 0 for a fresh download
    attempts: int


def quote_url(url: str) -> str:
    """Percent-encode a URL's path and query (the registry spells paths as their repositories do, 数据/内科.csv)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=urllib.parse.quote(parts.path, safe="/%"),
                                                  query=urllib.parse.quote(parts.query, safe="=&%")))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class Progress:
    """One progress line on stderr: redrawn in place on a terminal, every 10 % otherwise (logs stay short)."""

    def __init__(self, label: str, total: int | None, done: int = 0, stream=None):
        self.label, self.total, self.done = label, total, done
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.started, self.start_bytes, self.last_draw, self.last_decile = time.monotonic(), done, 0.0, -1

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        decile = int(10 * self.done / self.total) if self.total else -1
        if (self.tty and now - self.last_draw >= 0.2) or (not self.tty and decile > self.last_decile):
            self.last_draw, self.last_decile = now, decile
            self._draw(now)

    def _draw(self, now: float, end: str = "") -> None:
        rate = (self.done - self.start_bytes) / max(now - self.started, 1e-6)
        if self.total:
            filled = int(20 * self.done / self.total)
            text = f"{self.label} [{'#' * filled}{'.' * (20 - filled)}] {self.done / self.total:4.0%} {_size(self.done)}/{_size(self.total)}"
        else:
            text = f"{self.label} {_size(self.done)}"
        text += f" {_size(rate)}/s"
        self.stream.write(("\r" + text + end) if self.tty else (text + "\n"))
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self._draw(time.monotonic(), end="\n")


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(quote_url(url), headers=headers), timeout=timeout)


def _total_from(response, offset: int) -> tuple[int | None, bool]:
    """(full file size if known, whether the server honoured the range)."""
    content_range = response.headers.get("Content-Range", "")
    length = response.headers.get("Content-Length")
    if response.status == 206:
        if not content_range.startswith(f"bytes {offset}-"):
            raise DownloadError(f"{response.url}: asked for bytes {offset}- but the server sent {content_range or 'an unlabelled range'}")
        total = content_range.rsplit("/", 1)[-1]
        return (int(total) if total.isdigit() else None), True
    return (int(length) if length and length.isdigit() else None), False


def fetch(url: str, dest: Path, *, sha256: str | None = None, size_bytes: int | None = None, retries: int = 5,
          timeout: float = 60.0, label: str | None = None, stream=None) -> Fetched:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify it, return what was fetched."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    resumed_from = part.stat().st_size if part.exists() else 0
    attempts, cuts, total = 0, 0, size_bytes
    progress: Progress | None = None
    while True:
        attempts += 1
        offset = part.stat().st_size if part.exists() else 0
        try:
            response = _open(url, offset, timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset and (total is None or offset >= total):
                break  # the .part already holds the whole file: verify it below
            raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError) as exc:
            cuts += 1
            if cuts > retries:
                raise DownloadError(f"{url}: cannot connect ({exc}); the partial file {part} is kept, run again to resume") from exc
            time.sleep(min(2.0 * cuts, 10.0))
            continue
        with response:
            full, ranged = _total_from(response, offset)
            if offset and not ranged:
                offset = 0  # the server sent the whole file: start the .part again
            total = full if full is not None else total
            if progress is None:
                progress = Progress(label or dest.name, total, offset, stream)
            else:
                progress.total, progress.done = total, offset
            cut = None
            with open(part, "ab" if offset else "wb") as out:  # a disk error here is not a cut: it propagates
                while True:
                    try:
                        block = response.read(CHUNK)
                    except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
                        cut = exc
                        break
                    if not block:
                        break
                    out.write(block)
                    progress.update(len(block))
            if cut is not None:
                cuts += 1
                if cuts > retries:
                    progress.close()
                    raise DownloadError(f"{url}: the connection was cut {cuts} times (last: {cut!r}); {part} keeps "
                                        f"{part.stat().st_size} bytes, run the same command again to resume") from cut
                time.sleep(min(0.5 * cuts, 5.0))
                continue
        got = part.stat().st_size
        if total is not None and got < total:
            cuts += 1  # the server closed early without an error: ask for the rest
            if cuts > retries:
                progress.close()
                raise DownloadError(f"{url}: the connection was cut {cuts} times; {part} keeps {got} of {total} bytes, "
                                    "run the same command again to resume")
            continue
        break
    if progress is not None:
        progress.close()
    got = part.stat().st_size
    if size_bytes is not None and got != size_bytes:
        part.unlink()
        raise DownloadError(f"{url}: got {got} bytes, the registry says {size_bytes}; the file was removed")
    actual = sha256_of(part)
    if sha256 and actual != sha256.lower():
        part.unlink()
        raise DownloadError(f"{url}: sha256 mismatch: expected {sha256}, got {actual}. The file was removed. If the "
                            "source changed the file on purpose, check it and pin the new hash (--sha256)")
    os.replace(part, dest)
    return Fetched(dest, actual, got, resumed_from, attempts)
