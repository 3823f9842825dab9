"""One distillation run, in order: seeds -> skip finished -> generate (Ray Data) -> validate -> dedup -> write -> register.

Files in output_dir:
    raw.jsonl          resume log: one line per finished seed (record, usage); kept across runs
    DATASET.jsonl      the validated, de-duplicated dataset, in seed order (rewritten every run)
    failures.jsonl     this run's failed seeds: id, reason, detail, attempts (no text)
    filtered.jsonl     records dropped by validation or dedup: id, reason, kept id for duplicates (no text)
    report.json        the DistillReport
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from caregpt.distill.config import DistillConfig
from caregpt.distill.dedup import find_duplicates, record_text
from caregpt.distill.execute import resolve_api_key, run_in_process, run_with_ray
from caregpt.distill.output import register_dataset, registry_entry, write_jsonl
from caregpt.distill.ratelimit import LocalLimiter
from caregpt.distill.report import DistillReport
from caregpt.distill.seeds import SeedItem, load_seeds, seed_items
from caregpt.distill.store import ResumeStore
from caregpt.distill.tasks import Generation
from caregpt.distill.validate import RecordChecker

logger = logging.getLogger(__name__)
PROGRESS_EVERY_S = 10.0


def _finalize(config: DistillConfig, items: list[SeedItem], store: ResumeStore, report: DistillReport, out: Path) -> None:
    """Validate and de-duplicate everything finished so far (this run and earlier ones), in seed order."""
    checker = RecordChecker(config)
    finished = [(item, store.entries[item.id]) for item in items if item.id in store]
    filtered: list[dict] = []
    candidates: list[tuple[SeedItem, dict]] = []
    for item, entry in finished:
        reason = checker.check(entry["record"], entry.get("finish_reasons", []))
        if reason:
            filtered.append({"id": item.id, "index": item.index, "reason": reason})
        else:
            candidates.append((item, entry))
    duplicates = find_duplicates([record_text(e["record"]) for _, e in candidates], config.dedup_threshold, config.dedup_ngram)
    kept = []
    for position, (item, entry) in enumerate(candidates):
        if position in duplicates:
            reason, first = duplicates[position]
            filtered.append({"id": item.id, "index": item.index, "reason": reason, "duplicate_of": candidates[first][0].id})
        else:
            kept.append({**entry["record"], "id": item.id})
    by_reason: dict[str, int] = {}
    for row in filtered:
        by_reason[row["reason"]] = by_reason.get(row["reason"], 0) + 1
    report.filtered, report.filtered_by_reason = len(filtered), by_reason
    data_file = out / f"{config.dataset_name}.jsonl"
    write_jsonl(data_file, kept)
    write_jsonl(out / "filtered.jsonl", sorted(filtered, key=lambda r: r["index"]))
    report.records_written, report.output_file = len(kept), str(data_file)
    if config.register_dataset:
        dataset_dir = Path(config.dataset_dir)
        path, action = register_dataset(dataset_dir, config.dataset_name, registry_entry(config.kind, data_file, dataset_dir), config.dataset_info)
        report.registry, report.registry_action = str(path), action


def run_distill(config: DistillConfig, use_ray: bool = True) -> DistillReport:
    """The whole run; use_ray=False runs the requests on local threads (same logic, no cluster)."""
    started = time.monotonic()
    api_key = resolve_api_key(config)  # fail before any work when the key is missing
    seeds, invalid = load_seeds(config)
    items, repeats = seed_items(config, seeds)
    report = DistillReport(kind=config.kind, model=config.model, base_url=config.base_url, seeds=len(seeds) * config.samples_per_seed,
                           unique_seeds=len(items), repeated_seeds=repeats, invalid_seed_records=invalid)
    out = Path(config.output_dir)
    failures: list[dict] = []
    with ResumeStore(out) as store:
        report.repaired_log_lines = store.repaired_lines
        pending = [item for item in items if item.id not in store]
        report.already_done = len(items) - len(pending)
        logger.info("distill: %d seeds, %d already done, %d to generate", len(items), report.already_done, len(pending))
        last_log = [time.monotonic()]
        windows: list[tuple[float, float]] = []

        def on_result(generation: Generation) -> None:
            windows.append((generation.started_at, generation.finished_at))
            report.add(generation)
            if generation.status == "ok":
                store.append({"id": generation.id, "index": generation.index, "record": generation.record,
                              "finish_reasons": generation.finish_reasons, "model": config.model,
                              "usage": {"prompt_tokens": generation.prompt_tokens, "completion_tokens": generation.completion_tokens}})
            else:
                failures.append({"id": generation.id, "index": generation.index, "reason": generation.reason,
                                 "detail": generation.detail, "requests": generation.requests})
            if time.monotonic() - last_log[0] > PROGRESS_EVERY_S:
                last_log[0] = time.monotonic()
                logger.info("distill: %d/%d done (%d failed)", report.generated + report.failed, len(pending), report.failed)

        generation_started = time.time()
        if use_ray:
            run_with_ray(config, pending, api_key, on_result)
        else:
            limiter = LocalLimiter(config.rate_limit) if config.rate_limit > 0 else None
            run_in_process(config, pending, api_key, on_result, limiter)
        if windows:
            # start-up (cluster, actors) is reported apart from the rate, which covers only the time requests ran
            first_start, last_end = min(w[0] for w in windows), max(w[1] for w in windows)
            report.startup_s = round(max(0.0, first_start - generation_started), 3)
            report.seeds_per_s = round(len(windows) / (last_end - first_start), 3) if last_end > first_start else 0.0
        write_jsonl(out / "failures.jsonl", sorted(failures, key=lambda r: r["index"]))
        _finalize(config, items, store, report, out)
    report.price(config.price_prompt_per_1k, config.price_completion_per_1k)
    report.elapsed_s = round(time.monotonic() - started, 3)
    report.write(out / "report.json")
    return report

