"""The entrypoint of one fine-tuning Ray job: `python -m caregpt.finetune.entry JOB_FOLDER`.

JOB_FOLDER (a local path or a URI under the storage root) holds what the service prepared while validating
the job: ``data/train.jsonl`` with ``data/dataset_info.json`` and ``train.json`` (the `caregpt train` keys).
A remote folder is copied to local scratch first and the outputs copied back to ``JOB_FOLDER/output``, so the
job runs the same on one machine and on a cluster with object storage. Training itself is `caregpt train`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from caregpt.finetune.storage import fetch, push_dir, scratch


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m caregpt.finetune.entry JOB_FOLDER", file=sys.stderr)
        return 2
    folder = argv[0].rstrip("/")
    remote = "://" in folder
    local = fetch(folder, scratch() / "job") if remote else Path(folder)
    args = json.loads((local / "train.json").read_text(encoding="utf-8"))
    args["dataset_dir"] = str(local / "data")
    args["output_dir"] = str(local / "output")
    import yaml

    config = local / "train.yaml"
    config.write_text(yaml.safe_dump(args, allow_unicode=True), encoding="utf-8")
    from caregpt.cli import main as caregpt

    code = caregpt(["train", str(config)])
    if code == 0 and remote:
        push_dir(local / "output", folder + "/output")
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
