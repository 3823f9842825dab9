"""The feedback -> DPO loop against a running chat app with the fine-tuning service (docs/finetune-openai-sdk.md).

    mkdir -p .demo/adapters && caregpt serve jobs/configs/finetune_service.yaml &
    CAREGPT_API_KEY=sk-demo-clinic python jobs/feedback_dpo_loop.py --api_base http://127.0.0.1:8000/v1 --state_dir .demo/ft/state

1. asks the served model the questions of a review file, as the web chat would;
2. rates each answer the way a clinician does in the web chat: thumbs down with a better answer (the review's
   preferred answer), through POST /v1/feedback;
3. `caregpt data export --format preference` turns the ratings into preference pairs;
4. uploads them with the `openai` SDK, starts a `method: dpo` job, prints its events as it trains;
5. asks the improved model (ft:<base>:<suffix>:<job-id>), served at once through multiplexing.

The review file is the shipped sample preference data (question + preferred answer) unless --reviews is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REVIEWS = REPO / "platform" / "caregpt" / "resources" / "sample_data" / "medical_pref.jsonl"


def reviews(path: Path, limit: int) -> list[tuple[str, str]]:
    """(question, better answer) pairs: alpaca preference rows (instruction, output [chosen, rejected])."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and len(out) < limit:
            row = json.loads(line)
            out.append((row["instruction"], row["output"][0]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api_base", default="http://127.0.0.1:8000/v1", help="the app's OpenAI base URL")
    parser.add_argument("--api_key_env", default="CAREGPT_API_KEY", help="environment variable holding the API key")
    parser.add_argument("--state_dir", required=True, help="the service's state_dir (default <storage_root>/state), read by the export")
    parser.add_argument("--reviews", default=str(DEFAULT_REVIEWS), help="JSONL of {instruction, output: [better, worse]} rows")
    parser.add_argument("--count", type=int, default=20, help="questions to ask and rate (at least 10: a file needs 10 pairs)")
    parser.add_argument("--n_epochs", type=int, default=2, help="DPO epochs")
    parser.add_argument("--suffix", default="feedback", help="suffix of the fine-tuned model's name")
    args = parser.parse_args(argv)
    import httpx
    from openai import OpenAI

    from caregpt.finetune.feedback import export_preference

    key = os.environ.get(args.api_key_env, "")
    client = OpenAI(base_url=args.api_base, api_key=key or "none", timeout=300)
    base = client.models.list().data[0].id
    print(f"1-2. asking {base} and rating its answers")
    for question, better in reviews(Path(args.reviews), args.count):
        messages = [{"role": "user", "content": question}]
        reply = client.chat.completions.create(model=base, messages=messages, max_tokens=48)
        feedback = {"response_id": reply.id, "rating": "down", "messages": messages, "model": base,
                    "answer": reply.choices[0].message.content or "", "better_answer": better}
        httpx.post(f"{args.api_base.rstrip('/')}/feedback", json=feedback, headers={"Authorization": f"Bearer {key}"}, timeout=60).raise_for_status()
    pairs = Path(tempfile.mkdtemp()) / "pairs.jsonl"
    report = export_preference(args.state_dir, pairs, api_key=key or None)
    print(f"3. {report.format()}")
    uploaded = client.files.create(file=pairs.open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=base, training_file=uploaded.id, suffix=args.suffix,
                                         method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": args.n_epochs}}})
    print(f"4. {job.id} created ({uploaded.id})")
    seen: set[str] = set()
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(3)
        job = client.fine_tuning.jobs.retrieve(job.id)
        for event in reversed(list(client.fine_tuning.jobs.list_events(job.id, limit=100))):
            if event.id not in seen:
                seen.add(event.id)
                print(f"   {event.message}")
    if job.status != "succeeded":
        print(f"the job {job.status}: {job.error}", file=sys.stderr)
        return 1
    print(f"5. {job.fine_tuned_model}:")
    stream = client.chat.completions.create(model=job.fine_tuned_model, stream=True, max_tokens=64,
                                            messages=[{"role": "user", "content": reviews(Path(args.reviews), 1)[0][0]}])
    for chunk in stream:
        if chunk.choices:
            print(chunk.choices[0].delta.content or "", end="", flush=True)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
