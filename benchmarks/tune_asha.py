"""Benchmark: ASHA early stopping vs the full grid, for `caregpt tune` on a 12-configuration LoRA grid (never asserts).

The same search space (lora_rank x alpha_over_rank x learning_rate) runs twice through the project's own entry
points (`load_tune_config` on a written YAML, then `run_tune`, i.e. `caregpt tune CONFIG.yaml`): as a full grid
(`scheduler: fifo`) and with `scheduler: asha`. Printed: each best eval_loss and their relative difference, total
training steps and their ratio, wall times, a per-configuration table, and a replay of ASHA over the grid's
measured curves in other launch orders. Methodology and latest figures: benchmarks/README.md.

    .venv/bin/python benchmarks/tune_asha.py --json /tmp/tune_asha.json     # ~15-20 min on the shared 2-core machine
    .venv/bin/python benchmarks/tune_asha.py --quick                         # smoke run: 4 configurations, 8 steps
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import harness
from harness import Target

REGISTRY = harness.REPO / "examples" / "registries" / "shared_data.json"
TARGETS = {
    "relative_difference": Target("best eval_loss, (ASHA - grid) / grid", 0.02, higher_is_better=False, unit="%", signed=True),
    "step_ratio": Target("total training steps, ASHA / grid", 0.50, higher_is_better=False, unit="%"),
}

# full: 2 x 2 x 3 = 12 configurations; quick: 2 x 1 x 2 = 4, short trials, for a smoke run
PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        "lora_rank": [4, 16], "alpha_over_rank": [1, 4], "learning_rate": [1e-4, 1e-3, 1e-2],
        "max_samples": 300, "cutoff_len": 128, "max_steps": 40, "eval_steps": 5, "grace_period": 5, "reduction_factor": 3,
    },
    "quick": {
        "lora_rank": [4, 16], "alpha_over_rank": [2], "learning_rate": [1e-4, 1e-2],
        "max_samples": 96, "cutoff_len": 128, "max_steps": 8, "eval_steps": 2, "grace_period": 2, "reduction_factor": 2,
    },
}
PARAMS = ("lora_rank", "lora_alpha", "learning_rate")


def build_model(workdir: Path, data_dir: Path) -> str:
    """The tiny model of the tests' fixture; reused when --workdir already holds one (its build is deterministic)."""
    from caregpt.models.tiny import build_tiny_model

    out = workdir / "tiny-model"
    if (out / "config.json").is_file():
        return str(out)
    corpus = [p for p in (data_dir / "pretrain_medicalgpt_fever.txt", data_dir / "sft_toyhom_im_department.jsonl") if p.is_file()]
    return str(build_tiny_model("tiny", corpus, out, seed=0, overwrite=True))


def write_config(workdir: Path, name: str, model: str, p: dict[str, Any], scheduler: dict[str, Any], concurrent: int,
                 data_dir: Path) -> Path:
    """One `caregpt tune` YAML: the base training config plus its `tune:` section."""
    import yaml

    config = {
        "stage": "sft",
        "model_name_or_path": model,
        "dataset": "toyhom_sft",
        "dataset_dir": str(data_dir),
        "dataset_info": str(REGISTRY),
        "template": "chatml",
        "cutoff_len": p["cutoff_len"],
        "max_samples": p["max_samples"],
        "val_size": 0.2,
        "finetuning_type": "lora",
        "lora_target": "all",
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 20,
        "max_steps": p["max_steps"],
        "eval_steps": p["eval_steps"],
        "logging_steps": p["eval_steps"],  # fewer progress lines; the metric reaches Tune at every eval anyway
        "num_workers": 1,
        # a fresh experiment every time: an identical earlier one in --workdir would otherwise be resumed
        "overwrite_output_dir": True,
        "output_dir": str(workdir / name),
        "tune": {
            "search_space": {key: {"type": "grid", "values": p[key]} for key in ("lora_rank", "alpha_over_rank", "learning_rate")},
            "metric": "eval_loss",
            "mode": "min",
            "max_concurrent_trials": concurrent,
            "scheduler": scheduler,
            "name": name,
            # both experiments under one storage: the data is tokenized once and cached for the second
            "storage_path": str(workdir / "ray_tune"),
        },
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_experiment(config_path: Path) -> dict[str, Any]:
    """`caregpt tune CONFIG.yaml`, timed; returns the trials as the project's report reads them back."""
    from caregpt.tune.run import run_tune
    from caregpt.tune.space import load_tune_config

    _, base_values, spec = load_tune_config(str(config_path))
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    outcome = run_tune(base_values, spec)
    wall = time.perf_counter() - start
    summary = outcome.summary
    # seconds each trial's actor spent (set-up of its Train run included): where wall time goes
    from ray.tune import ExperimentAnalysis

    busy = {t.trial_id: float(t.last_result.get("time_total_s") or 0.0) for t in ExperimentAnalysis(outcome.experiment_path).trials}
    trials = [
        {
            "trial_id": r.trial_id,
            "params": {k: r.params.get(k) for k in PARAMS},
            "metric": r.metric,
            "steps": r.steps or 0,  # the last step the trial reported to Tune: what it trained before a stop
            "state": r.state,
            "trial_s": busy.get(r.trial_id, 0.0),
            "history": r.history,
        }
        for r in summary.rows
    ]
    best = summary.best
    return {
        "wall_s": wall,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "experiment_path": outcome.experiment_path,
        "table_md": str(summary.table_md),
        "trials": trials,
        "best": None if best is None else {"trial_id": best.trial_id, "metric": best.metric, "params": {k: best.params.get(k) for k in PARAMS}, "state": best.state},
        "total_steps": sum(t["steps"] for t in trials),
        "trial_s": sum(t["trial_s"] for t in trials),
        "states": {s: sum(t["state"] == s for t in trials) for s in sorted({t["state"] for t in trials})},
    }


def key_of(params: dict[str, Any]) -> tuple:
    """A configuration's identity across the two experiments (their trial ids differ)."""
    return tuple(round(float(params[k]), 12) for k in PARAMS)


def report(asha: dict[str, Any], grid: dict[str, Any], preset: dict[str, Any]) -> dict[str, Any]:
    """Print the per-configuration table and the figures; return the figures for --json."""
    grid_by_key = {key_of(t["params"]): t for t in grid["trials"]}
    ranked_grid = sorted((t for t in grid["trials"] if t["metric"] is not None), key=lambda t: t["metric"])
    rank_in_grid = {key_of(t["params"]): i + 1 for i, t in enumerate(ranked_grid)}

    # ASHA trial ids are numbered in launch order: with asynchronous rungs the order matters (see the docstring)
    print("\nper configuration (grid rank 1 = lowest eval_loss after the full budget; trial s = the trial's own time, set-up included)")
    rows = []
    for t in sorted(asha["trials"], key=lambda t: rank_in_grid.get(key_of(t["params"]), 99)):
        g, p = grid_by_key.get(key_of(t["params"]), {}), t["params"]
        rows.append({"rank": rank_in_grid.get(key_of(p)), **{k: p[k] for k in PARAMS}, "g_loss": g.get("metric"), "g_steps": g.get("steps"),
                     "g_s": g.get("trial_s"), "a_id": t["trial_id"], "a_loss": t["metric"], "a_steps": t["steps"], "a_s": t["trial_s"], "a_state": t["state"]})
    harness.print_table(rows, [("grid rank", "rank", ""), ("lora_rank", "lora_rank", ""), ("lora_alpha", "lora_alpha", "g"),
                               ("learning_rate", "learning_rate", "g"), ("grid eval_loss", "g_loss", ".4f"), ("grid steps", "g_steps", ""),
                               ("grid trial s", "g_s", ".0f"), ("asha trial", "a_id", ""), ("asha eval_loss", "a_loss", ".4f"),
                               ("asha steps", "a_steps", ""), ("asha trial s", "a_s", ".0f"), ("asha state", "a_state", "")], markdown=True)

    figures: dict[str, Any] = {}
    a_best, g_best = asha["best"], grid["best"]
    print("\nsummary")
    if a_best is None or g_best is None:
        print("  an experiment produced no eval_loss: see the Ray Tune logs above; nothing to compare")
    else:
        rel = (a_best["metric"] - g_best["metric"]) / abs(g_best["metric"])
        worst = ranked_grid[-1]["metric"]
        spread = (worst - g_best["metric"]) / abs(g_best["metric"])
        # relative loss differences near ln(vocab) are small whatever happens: place ASHA's pick on the grid's own scale
        regret = (a_best["metric"] - g_best["metric"]) / (worst - g_best["metric"]) if worst > g_best["metric"] else 0.0
        pick_rank = rank_in_grid.get(key_of(a_best["params"]))
        figures.update(asha_best=a_best["metric"], grid_best=g_best["metric"], relative_difference=rel, grid_spread=spread,
                       normalised_regret=regret, asha_pick_grid_rank=pick_rank)
        describe = lambda b: ", ".join(f"{k}={b['params'][k]:g}" for k in PARAMS)  # noqa: E731
        print(f"  best eval_loss, grid: {g_best['metric']:.4f} ({g_best['trial_id']}: {describe(g_best)})")
        print(f"  best eval_loss, ASHA: {a_best['metric']:.4f} ({a_best['trial_id']}: {describe(a_best)}, {a_best['state']})")
        print("  " + TARGETS["relative_difference"].line(rel))
        print(f"    for scale: the grid's worst is {spread:.2%} above its best; ASHA's pick is grid rank {pick_rank} of "
              f"{len(ranked_grid)}, {regret:.0%} of the way from the grid's best to its worst")
        # the runs are seeded: a configuration must report the same eval_loss at the same step in both experiments
        diffs = [abs(m - dict(grid_by_key[key_of(t["params"])]["history"]).get(step, m))
                 for t in asha["trials"] if key_of(t["params"]) in grid_by_key for step, m in t["history"]]
        if diffs:
            figures["max_abs_diff_same_step"] = max(diffs)
            print(f"    same configuration, same step, ASHA vs grid: largest eval_loss difference {max(diffs):.2g} over {len(diffs)} evaluations")
    ratio = asha["total_steps"] / grid["total_steps"] if grid["total_steps"] else float("nan")
    figures.update(asha_total_steps=asha["total_steps"], grid_total_steps=grid["total_steps"], step_ratio=ratio)
    print("  " + TARGETS["step_ratio"].line(ratio, f"ASHA {asha['total_steps']}, grid {grid['total_steps']} steps (sum over trials of the "
          f"last step reported to Tune; planned {len(grid['trials'])} x {preset['max_steps']} = {len(grid['trials']) * preset['max_steps']})"))
    print(f"  trial states: ASHA {asha['states']}, grid {grid['states']}")
    wall_ratio = asha["wall_s"] / grid["wall_s"]
    trial_ratio = asha["trial_s"] / grid["trial_s"] if grid["trial_s"] else float("nan")
    figures.update(asha_wall_s=asha["wall_s"], grid_wall_s=grid["wall_s"], wall_ratio=wall_ratio,
                   asha_trial_s=asha["trial_s"], grid_trial_s=grid["trial_s"], trial_s_ratio=trial_ratio)
    print(f"  wall time: ASHA {asha['wall_s']:.0f} s, grid {grid['wall_s']:.0f} s (ratio {wall_ratio:.1%}); "
          f"summed trial time: ASHA {asha['trial_s']:.0f} s, grid {grid['trial_s']:.0f} s (ratio {trial_ratio:.1%})")
    print(f"  load average (1 min) at start/end: ASHA {asha['load_before']:.1f}/{asha['load_after']:.1f}, "
          f"grid {grid['load_before']:.1f}/{grid['load_after']:.1f} on {os.cpu_count()} cores")
    return figures


def replay(grid: dict[str, Any], asha_yaml: Path, concurrent: int, orders: int, seed: int = 0) -> dict[str, Any]:
    """ASHA replayed on the grid's measured eval_loss curves, for other launch orders than the one that ran.

    Evaluations are seeded and deterministic (the summary checks it: same configuration, same step, same
    value in both experiments), so the grid's curves are what any ASHA trial would report. The replay feeds
    them, in simulated time, to the scheduler `caregpt.tune.run.make_scheduler` builds from the ASHA YAML:
    `concurrent` slots, each trial a set-up of 15-45 step-times (drawn; roughly this machine's ratio) and
    then one step-time per step; a stopped or finished trial frees its slot for the next in launch order.
    A model, not a measurement: it says how much of the live step ratio is the launch order.
    """
    import heapq
    import random
    import statistics
    from types import SimpleNamespace

    from caregpt.tune.run import make_scheduler
    from caregpt.tune.space import load_tune_config

    config, _, spec = load_tune_config(str(asha_yaml))
    trials = grid["trials"]
    max_t = max(t["steps"] for t in trials)
    best = min(range(len(trials)), key=lambda i: trials[i]["metric"])
    rng = random.Random(seed)

    def simulate(order: list[int]) -> tuple[int, bool, float]:
        scheduler = make_scheduler(config, spec, max_t)
        scheduler.set_search_properties(spec.metric, spec.mode)
        events: list[tuple[float, int, int]] = []
        pending, trained, done = list(order), {}, set()

        def launch(now: float) -> None:
            if pending:
                i = pending.pop(0)
                scheduler.on_trial_add(None, SimpleNamespace(trial_id=str(i)))
                start = now + rng.uniform(15, 45)
                for step, _ in trials[i]["history"]:
                    heapq.heappush(events, (start + step, int(step), i))

        for _ in range(concurrent):
            launch(0.0)
        while events:
            now, step, i = heapq.heappop(events)
            if i in done:
                continue
            metric = dict(trials[i]["history"])[step]
            action = scheduler.on_trial_result(None, SimpleNamespace(trial_id=str(i)), {"step": step, spec.metric: metric})
            if action == "STOP" or step >= max_t:
                trained[i], done = step, done | {i}
                launch(now)
        finished = [i for i in trained if trained[i] >= max_t]
        pick = min(finished, key=lambda i: trials[i]["metric"])
        return sum(trained.values()), pick == best, (trials[pick]["metric"] - trials[best]["metric"]) / trials[best]["metric"]

    plan = len(trials) * max_t
    runs = {"launch order that ran": [list(range(len(trials)))] * orders, "reversed": [list(range(len(trials)))[::-1]] * orders,
            "random orders": [rng.sample(range(len(trials)), len(trials)) for _ in range(orders)]}
    out: dict[str, Any] = {}
    print(f"\nASHA replayed on the grid's curves ({orders} draws each; a model, see replay() in the script)")
    for name, batch in runs.items():
        results = [simulate(order) for order in batch]
        ratios = sorted(r[0] / plan for r in results)
        out[name] = {"step_ratio_median": statistics.median(ratios), "step_ratio_p10": ratios[len(ratios) // 10],
                     "step_ratio_p90": ratios[(9 * len(ratios)) // 10], "found_best": sum(r[1] for r in results) / len(results),
                     "worst_relative_difference": max(r[2] for r in results)}
        o = out[name]
        print(f"  {name:<22} step ratio median {o['step_ratio_median']:.0%} (10-90 %: {o['step_ratio_p10']:.0%}-{o['step_ratio_p90']:.0%}); "
              f"picked the grid's best {o['found_best']:.0%} of the time; worst relative difference {o['worst_relative_difference']:+.3%}")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="ASHA early stopping vs the full grid for `caregpt tune` (issue 5): best eval_loss of each, "
        "their relative difference, total training steps and their ratio, wall times, and a per-trial table. "
        "Figures are printed, never asserted.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 4 configurations (rank 4/16 x lr 1e-4/1e-2, alpha = 2 x rank), 8 steps, eval every 2, "
                        "ASHA grace 2 and factor 2, 96 records (a few minutes)")
    parser.add_argument("--data-dir", default=str(harness.SHARED_DATA),
                        help="folder with sft_toyhom_im_department.jsonl (+ pretrain_medicalgpt_fever.txt for the tokenizer) (default: %(default)s)")
    parser.add_argument("--json", metavar="OUT", help="also write the settings, every trial and the figures to this JSON file")
    parser.add_argument("--workdir", metavar="DIR",
                        help="put the model, YAMLs, Tune experiments and trial outputs here and keep them (default: a temp dir, "
                        "deleted at the end unless --keep); a tiny model already in DIR/tiny-model is reused")
    parser.add_argument("--keep", action="store_true", help="keep the temp work dir and print its path")
    parser.add_argument("--concurrent", type=int, default=2, metavar="N",
                        help="max_concurrent_trials of both experiments (default: 2, each trial then trains with one torch thread on this 2-core machine)")
    parser.add_argument("--steps", type=int, help="override max_steps per trial (full: 40, quick: 8)")
    parser.add_argument("--eval-steps", type=int, help="override eval_steps, how often eval_loss reaches Tune (full: 5, quick: 2)")
    parser.add_argument("--grace-period", type=int, help="override ASHA's grace_period in steps (full: 5, quick: 2)")
    parser.add_argument("--reduction-factor", type=float, help="override ASHA's reduction_factor (full: 3, quick: 2)")
    parser.add_argument("--replay", type=int, default=200, metavar="N",
                        help="after the live runs, replay ASHA on the grid's measured curves N times for the launch order that ran, "
                        "the reverse and random orders (no training; default 200, 0 to skip)")
    parser.add_argument("--order", choices=("asha-first", "grid-first"), default="asha-first",
                        help="which experiment runs first (default: asha-first); the machine's load drifts, so wall times depend a little on it")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # as the test suite: no progress bars, nothing fetched from the hub, quiet tokenizers in forked workers
    os.environ.setdefault("CAREGPT_PROGRESS", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    preset = dict(PRESETS["quick" if args.quick else "full"])
    for key in ("steps", "eval_steps", "grace_period", "reduction_factor"):
        value = getattr(args, key)
        if value is not None:
            preset["max_steps" if key == "steps" else key] = value

    data_dir = Path(args.data_dir).resolve()
    harness.require_files(data_dir / "sft_toyhom_im_department.jsonl", flag="--data-dir")
    started = time.perf_counter()
    with harness.work_dir(args.workdir, args.keep, "caregpt-bench-tune-") as workdir:
        try:
            model = build_model(workdir, data_dir)
            asha_scheduler = {"type": "asha", "grace_period": preset["grace_period"], "reduction_factor": preset["reduction_factor"]}
            configs = {name: write_config(workdir, name, model, preset, scheduler, args.concurrent, data_dir)
                       for name, scheduler in (("asha", asha_scheduler), ("grid", {"type": "fifo"}))}
            order = ["asha", "grid"] if args.order == "asha-first" else ["grid", "asha"]
            results = {}
            for name in order:
                print(f"\n=== {name}: caregpt tune {configs[name]} ===", flush=True)
                results[name] = run_experiment(configs[name])
            print(f"\n=== caregpt tune: ASHA vs full grid, {len(results['grid']['trials'])} configurations x {preset['max_steps']} "
                  f"steps, eval_loss every {preset['eval_steps']} steps, ASHA grace {preset['grace_period']} factor "
                  f"{preset['reduction_factor']:g}, {args.concurrent} trials at a time, {preset['max_samples']} records ===")
            figures = report(results["asha"], results["grid"], preset)
            if args.replay and results["grid"]["best"] is not None:
                figures["replay"] = replay(results["grid"], configs["asha"], args.concurrent, args.replay)
            total = time.perf_counter() - started
            print(f"  whole script: {total:.0f} s")
            harness.write_json(args.json, {"settings": {**preset, "concurrent": args.concurrent, "order": order},
                                           "figures": figures, "total_s": total, **results})
        finally:
            import ray

            if ray.is_initialized():  # our embedded Ray only (run_tune started it): stop it before its storage is removed
                ray.shutdown()
    return 0

if __name__ == "__main__":
    sys.exit(main())
