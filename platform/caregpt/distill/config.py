"""DistillConfig: every setting of a distillation run, validated before any request is sent.

Keys are flat, as in the training configs. The docstring under each field is its `--help` text.
Order of precedence: defaults < YAML file < `--key value` flags.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from caregpt.config.loader import ConfigError
from caregpt.config.fields import CommaList, key
from caregpt.distill import templates as T

Kind = Literal["sft", "multiturn", "preference", "kb_document"]




class DistillConfig(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", validate_assignment=True, protected_namespaces=())

    # ---- what to generate
    kind: Kind = "sft"
    """What each seed becomes: sft (question + answer), multiturn (a patient-doctor dialogue), preference (two answers
    ranked by a judge call: output [chosen, rejected]) or kb_document (a knowledge-base document {"content": ...})."""

    seeds: CommaList[str] | None = None
    """Seed inputs (topics, departments, symptoms or questions): a YAML list, or comma separated on the command line."""

    seeds_file: Annotated[str | None, key(path="in")] = None
    """Seeds from a file: .txt (one per line), .jsonl or .json (strings, or objects: see seed_field)."""

    seed_field: str | None = None
    """Field holding the seed in .jsonl/.json seed objects (default: the first of seed, topic, question, instruction, text)."""

    seed_dataset: str | None = None
    """Seeds from a registered dataset (name in dataset_info.json, or a data file): the last user turn of each record."""

    dataset_dir: Annotated[str, key(path="in")] = "data"
    """Folder holding dataset_info.json: where seed_dataset is looked up and the output is registered."""

    dataset_info: Annotated[str | None, key(path="in")] = None
    """Registry file to use instead of DATASET_DIR/dataset_info.json."""

    max_seeds: int | None = None
    """Use at most this many seeds (the first ones)."""

    samples_per_seed: int = 1
    """Records to generate per seed (each with its own id; templates can use {variant})."""

    # ---- prompts
    system_prompt: str | None = T.DEFAULT_SYSTEM
    """System message sent with every generation request (not with judge calls). Empty: none."""

    question_template: str | None = None
    """sft / preference: turn a seed into a patient question with one extra call ({seed}, {variant}). Unset: the seed
    itself is the question."""

    answer_template: str = T.DEFAULT_ANSWER
    """sft / preference: the prompt that asks for the answer ({question}, {seed}, {variant})."""

    alt_answer_template: str | None = None
    """preference: the prompt for the second answer (default: answer_template, sampled at alt_temperature)."""

    judge_template: str = T.DEFAULT_JUDGE
    """preference: the judge prompt ({question}, {answer_a}, {answer_b}); the reply names "A" or "B" (JSON {"better": ...})."""

    dialogue_template: str = T.DEFAULT_DIALOGUE
    """multiturn: the prompt asking for a JSON list of {role, content} turns ({seed}, {variant}, {turns})."""

    dialogue_turns: int = 3
    """multiturn: user/assistant rounds to ask for ({turns} in dialogue_template)."""

    document_template: str = T.DEFAULT_DOCUMENT
    """kb_document: the prompt that asks for the document ({seed}, {variant})."""

    # ---- the teacher endpoint
    base_url: str = "https://api.openai.com/v1"
    """Any OpenAI-compatible endpoint: OpenAI, a vLLM server, our Ray Serve API (http://HOST:PORT/v1)."""

    model: str = "gpt-4o-mini"
    """Teacher model name as the endpoint knows it."""

    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable that holds the API key (the key itself never goes into a config or report).
    Local endpoints (localhost) work without it."""

    temperature: float = 0.7
    """Sampling temperature of generation calls (judge calls use 0)."""

    alt_temperature: float = 1.0
    """preference: temperature of the second answer, so the two answers differ."""

    max_tokens: int = 1024
    """Maximum completion tokens per call; a reply cut at this limit counts as truncated."""

    rate_limit: float = 5.0
    """Requests per second across all workers (a shared token bucket); 0 means no limit."""

    concurrency: int = 8
    """Requests in flight at once across all workers."""

    num_actors: int = 2
    """Ray Data actors that send requests (each runs concurrency / num_actors threads)."""

    timeout: float = 60.0
    """Seconds one request may take before it counts as a timeout (and is retried)."""

    max_retries: int = 5
    """Retries per request after the first try, for 429, 5xx, timeouts, connection errors and garbage replies."""

    backoff_base: float = 1.0
    """First retry waits about this many seconds; each further retry doubles it (with jitter)."""

    backoff_max: float = 30.0
    """Upper bound of one backoff wait in seconds (a Retry-After header may ask for longer)."""

    max_retry_after: float = 120.0
    """A Retry-After longer than this many seconds ends the request as failed instead of waiting."""

    content_retries: int = 1
    """multiturn / preference: extra tries when the reply is not the requested JSON (dialogue) or verdict (judge)."""

    # ---- output
    output_dir: Annotated[str, key(path="out")] = "outputs/distill"
    """Where raw.jsonl (the resume log), the dataset file, failures.jsonl, filtered.jsonl and report.json go."""

    dataset_name: str = "distilled"
    """Name of the output dataset: the file DATASET_NAME.jsonl and its dataset_info.json entry."""

    register_dataset: bool = True
    """Add (or update) the dataset_info.json entry for the output; other entries are never touched."""

    # ---- validation
    language: Literal["zh", "en", "any"] = "zh"
    """Expected language of generated text: zh needs min_cjk_ratio of letters to be Chinese characters."""

    min_cjk_ratio: float = 0.3
    """language zh: the smallest share of Chinese characters among letters."""

    min_chars: int = 10
    """Shortest accepted answer / document, in characters."""

    max_chars: int = 6000
    """Longest accepted answer / document, in characters."""

    refusal_patterns: CommaList[str] | None = None
    """Extra regular expressions that mark a refusal (added to the built-in Chinese and English ones); a YAML list, or
    comma separated on the command line (put patterns that contain commas in the YAML file)."""

    drop_truncated: bool = True
    """Drop records whose reply stopped at max_tokens (finish_reason "length")."""

    dedup_threshold: float = 0.85
    """Records whose character n-gram Jaccard similarity to an earlier record reaches this are dropped; 0 keeps
    near-duplicates (exact duplicates are always dropped)."""

    dedup_ngram: int = 3
    """Character n-gram size for near-duplicate detection."""

    # ---- cost and operation
    price_prompt_per_1k: float = 0.0
    """Price per 1,000 prompt tokens, for the cost estimate in the report."""

    price_completion_per_1k: float = 0.0
    """Price per 1,000 completion tokens, for the cost estimate in the report."""

    log_text: bool = False
    """Log prompts and replies at debug level. Off by default: seed data may hold patient text."""

    ray_address: str | None = None
    """Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray)."""

    actor_cpus: float = 0.25
    """Logical CPUs reserved per request actor (they mostly wait on the network)."""

    @field_validator("samples_per_seed", "concurrency", "num_actors", "max_tokens", "dialogue_turns", "dedup_ngram")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    @field_validator("max_retries", "content_retries", "min_chars", "rate_limit", "backoff_base", "backoff_max",
                     "max_retry_after", "price_prompt_per_1k", "price_completion_per_1k", "actor_cpus")
    @classmethod
    def _not_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must not be negative")
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be a positive number of seconds")
        return value

    @field_validator("dedup_threshold", "min_cjk_ratio")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0 <= value <= 1:
            raise ValueError("must be between 0 and 1")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DistillConfig:
        sources = [k for k in ("seeds", "seeds_file", "seed_dataset") if getattr(self, k)]
        if len(sources) != 1:
            what = "none" if not sources else " and ".join(sources)
            raise ValueError(f"give exactly one seed source: seeds, seeds_file or seed_dataset (got {what})")
        for key in T.TEMPLATE_FIELDS:
            value = getattr(self, key)
            if value is not None:
                T.check_template(key, value)
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) is larger than max_chars ({self.max_chars})")
        if self.num_actors > self.concurrency:
            raise ValueError(f"num_actors ({self.num_actors}) exceeds concurrency ({self.concurrency}): each actor needs a request slot")
        return self

    def templates_for_kind(self) -> dict[str, str | None]:
        """The prompt text that shapes this kind's output (part of every seed id)."""
        return {key: getattr(self, key) for key in T.KIND_TEMPLATES[self.kind]}

    @property
    def threads_per_actor(self) -> int:
        return -(-self.concurrency // self.num_actors)


def build_distill_config(values: dict[str, tuple[Any, str]]) -> DistillConfig:
    """values: key -> (value, where it came from), through the one validation path of every verb."""
    from caregpt.config.loader import build_sections

    return build_sections(values, {"distill": DistillConfig}, "distill")["distill"]


def load_distill_config(argv: list[str]) -> DistillConfig:
    """`[CONFIG.yaml] [--key value ...]` through the one loader."""
    from caregpt.config.loader import gather, resolve_spec_paths, split_argv

    config_path, _, flags = split_argv(argv)
    return resolve_spec_paths(build_distill_config(gather(config_path, flags)))
