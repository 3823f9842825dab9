"""The run report: seeds, requests, tokens, estimated cost, failures and filtered records.

Every seed is accounted for: unique_seeds = already_done + generated + failed, and
records_written = already_done + generated - filtered. The report holds counts, reasons and ids only:
no prompt or reply text, and never the API key.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class DistillReport:
    kind: str
    model: str
    base_url: str
    seeds: int = 0
    unique_seeds: int = 0
    repeated_seeds: int = 0  # the same (seed, variant) given twice: generated once
    invalid_seed_records: int = 0  # records of a seed_dataset that did not parse
    already_done: int = 0  # finished by an earlier run (resume)
    generated: int = 0
    failed: int = 0
    failures_by_reason: dict[str, int] = field(default_factory=dict)
    requests: int = 0  # HTTP attempts, retries included
    # per attempt: ok, rate_limited, server_error, timeout, connection_error, bad_response, client_error; plus
    # bad_content for replies that arrived (counted as ok) but were not the JSON dialogue / verdict asked for
    request_outcomes: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated_cost: float = 0.0
    filtered: int = 0
    filtered_by_reason: dict[str, int] = field(default_factory=dict)
    records_written: int = 0
    elapsed_s: float = 0.0
    startup_s: float = 0.0  # from starting generation to the first request (cluster and actor start)
    seeds_per_s: float = 0.0  # seeds finished per second between the first request and the last reply
    output_file: str = ""
    registry: str = ""
    registry_action: str = ""
    repaired_log_lines: int = 0

    def add(self, generation) -> None:
        """Account for one seed's outcome (this run)."""
        self.requests += generation.requests
        self.prompt_tokens += generation.prompt_tokens
        self.completion_tokens += generation.completion_tokens
        outcomes = Counter(self.request_outcomes)
        outcomes.update(generation.outcomes)
        self.request_outcomes = dict(outcomes)
        if generation.status == "ok":
            self.generated += 1
        else:
            self.failed += 1
            self.failures_by_reason[generation.reason] = self.failures_by_reason.get(generation.reason, 0) + 1

    def price(self, per_1k_prompt: float, per_1k_completion: float) -> None:
        self.estimated_cost = round(self.prompt_tokens / 1000 * per_1k_prompt + self.completion_tokens / 1000 * per_1k_completion, 6)

    @property
    def accounted(self) -> bool:
        return self.unique_seeds == self.already_done + self.generated + self.failed

    def to_json(self) -> dict:
        data = asdict(self)
        data["accounted"] = self.accounted
        return data

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

    def format(self) -> str:
        def reasons(counts: dict[str, int]) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"

        lines = [
            f"distill ({self.kind}) with {self.model} at {self.base_url}",
            f"  seeds            {self.unique_seeds} unique ({self.seeds} given, {self.repeated_seeds} repeated)",
            f"  this run         {self.generated} generated, {self.failed} failed, {self.already_done} already done before",
            f"  failures         {reasons(self.failures_by_reason)}",
            f"  requests         {self.requests} ({reasons(self.request_outcomes)})",
            f"  tokens           {self.prompt_tokens} prompt + {self.completion_tokens} completion; estimated cost {self.estimated_cost:.4f}",
            f"  filtered         {self.filtered} ({reasons(self.filtered_by_reason)})",
            f"  written          {self.records_written} records -> {self.output_file}",
            f"  speed            {self.seeds_per_s:.2f} seeds/s after {self.startup_s:.1f}s start-up; {self.elapsed_s:.1f}s in all",
        ]
        if self.registry:
            lines.append(f"  registry         {self.registry_action} in {self.registry}")
        return "\n".join(lines)
