"""Safety guard latency per message on CPU, without the LLM judge (it runs on every chat request).

    PYTHONPATH=platform python benchmarks/guard_latency.py [--rounds 3]

Checks every message of the shipped safety dev and test sets `rounds` times (after one warm-up round) and prints
p50 / p99 / max in milliseconds, next to the rules-only guard (no classifier) as the baseline cost. Target: p99 <= 5 ms.
Timings on a shared machine are noisy: compare the two rows of one run, not runs on different days.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from caregpt.medical.guard import GuardConfig, SafetyGuard
from caregpt.medical.guard_eval import SETS


# wall time includes waiting for a CPU on a loaded machine; thread CPU time is the guard's own work
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def timings(guard: SafetyGuard, texts: list[str], rounds: int, clock=time.perf_counter) -> np.ndarray:
    for text in texts:  # warm-up: caches of the pinyin table and the converter
        guard.check([{"role": "user", "content": text}])
    out = []
    for _ in range(rounds):
        for text in texts:
            start = clock()
            guard.check([{"role": "user", "content": text}])
            out.append((clock() - start) * 1000)
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over all messages (default 3)")
    args = parser.parse_args()
    texts = [json.loads(line)["text"] for split in ("dev", "test") for line in (Path(SETS) / f"{split}.jsonl").open(encoding="utf-8")]
    rows = {"full guard (no judge)": SafetyGuard(), "no classifier": SafetyGuard(GuardConfig(classifier=False))}
    print(f"{len(texts)} messages x {args.rounds} rounds, mean length {np.mean([len(t) for t in texts]):.0f} chars")
    for (name, guard), (clock_name, clock) in [(r, c) for r in rows.items() for c in CLOCKS.items()]:
        ms = timings(guard, texts, args.rounds, clock)
        print(f"{name:<22} {clock_name:<9} p50 {np.percentile(ms, 50):6.3f} ms  p99 {np.percentile(ms, 99):6.3f} ms  max {ms.max():6.2f} ms"
              f"   target p99 <= 5 ms: {'met' if np.percentile(ms, 99) <= 5 else 'MISSED'}")


if __name__ == "__main__":
    main()
