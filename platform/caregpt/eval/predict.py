"""Batch prediction on Ray Data: records -> prompts -> a pool of model actors -> generated_predictions.jsonl.

    read (registry + formats, byte ranges of each file, in parallel)
      -> map_batches(PromptGenerator, concurrency=num_workers, 1 GPU each with use_gpu)
      -> the driver streams the rows, in input order, into output_dir/generated_predictions.jsonl

Every record is accounted for: invalid ones (bad JSON, a missing answer, turns out of order) travel
through the pipeline with their reason and are counted and reported at the end, never dropped
silently. ``preserve_order`` keeps the input order, so batches (and with greedy decoding, the
predictions) are the same for any number of actors. With ``do_eval`` the predictions are scored
(BLEU-4, ROUGE-1/2/L) and the scores land in predict_results.json with the counts.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from caregpt.config.loader import ConfigError, config_to_json
from caregpt.config.specs import RunConfig
from caregpt.data.registry import DatasetAttr, check_file, resolve_datasets
from caregpt.eval.generation import GenerationSettings, PromptGenerator

logger = logging.getLogger("caregpt.eval.predict")

PREDICTIONS_NAME = "generated_predictions.jsonl"
RESULTS_NAME = "predict_results.json"
EVAL_RESULTS_NAME = "eval_results.json"  # `--do_eval --predict_with_generate` without do_train, as CareGPT names it
# fields of a source record copied to its prediction line, so results can be sliced (per department...)
CARRIED_FIELDS = ("id", "department", "sub_department", "subset", "subject", "category")
MAX_EXAMPLES = 5
PROGRESS_SECONDS = 10.0

READ_SCHEMA = pa.schema(
    [
        ("loc", pa.string()),
        ("dataset", pa.string()),
        ("error", pa.string()),
        ("roles", pa.list_(pa.string())),
        ("contents", pa.list_(pa.string())),
        ("extra", pa.string()),
    ]
)


@dataclass
class PredictPlan:
    """What the driver checked and decided before Ray starts."""

    model: str
    attrs: list[DatasetAttr]
    adapters: list[str]
    output_dir: Path


@dataclass
class PredictOutcome:
    output_dir: Path
    results: dict[str, Any]
    invalid_examples: list[dict[str, str]] = field(default_factory=list)

    @property
    def invalid(self) -> int:
        return int(self.results["invalid"])


def settings_for(config: RunConfig) -> GenerationSettings:
    """The run config's generation group (the shared sampling spec) as the actors take it."""
    return GenerationSettings(**config.generation.resolved())


def plan_prediction(config: RunConfig, mode: str = "predict") -> PredictPlan:
    """Every check that can fail before a single actor starts; raises ConfigError saying what to fix."""
    from caregpt.data.formats import check_stage_kind
    from caregpt.data.templates import get_template
    from caregpt.data.tokenize import load_tokenizer
    from caregpt.models.adapter_check import validate_base_and_adapters

    model, infos = validate_base_and_adapters(config)
    adapters = [str(info.path) for info in infos]
    if config.model.quantization_bit and len(adapters) > 1:
        # a quantised base takes one adapter beside it; several would have to be merged, which needs float weights
        raise ConfigError(
            f"quantization_bit={config.model.quantization_bit} with {len(adapters)} adapters {adapters}: a quantised base "
            "runs one adapter. Merge them first (`caregpt export --checkpoint_dir ...`) and predict with the merged "
            "model, or drop quantization_bit to merge them in float"
        )
    try:
        tokenizer = load_tokenizer(model, config.model.trust_remote_code, config.model.use_fast_tokenizer)
        get_template(config.data.template, tokenizer)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"template {config.data.template!r} with the tokenizer of {model}: {exc}") from None
    for info in infos:
        trained = (info.training_config or {}).get("template")
        if trained and trained != config.data.template:
            logger.warning("adapter %s was trained with template %r but prediction uses %r", info.path, trained, config.data.template)
    attrs = resolve_datasets(config.data.dataset, config.data.dataset_dir, config.data.dataset_info)
    for attr in attrs:
        check_file(attr)
        check_stage_kind("sft", attr)  # prediction needs prompts with reference answers
    output_dir = Path(config.train.output_dir).resolve()
    result = output_dir / (EVAL_RESULTS_NAME if mode == "eval" else PREDICTIONS_NAME)
    if result.exists() and not config.train.overwrite_output_dir:
        raise ConfigError(f"{result} already exists: pass --overwrite_output_dir to replace it, or choose another output_dir")
    if config.train.do_eval:
        try:
            from caregpt.eval.metrics import generation_scores  # noqa: F401 - fail now, not after generating
        except ImportError as exc:
            raise ConfigError(f"do_eval needs the generation metrics (jieba, rouge-chinese, nltk): {exc}") from None
    return PredictPlan(model=model, attrs=attrs, adapters=adapters, output_dir=output_dir)


def _carried(value: Any) -> str:
    if not isinstance(value, dict):
        return "{}"
    kept = {k: value[k] for k in CARRIED_FIELDS if isinstance(value.get(k), (str, int, float, bool))}
    return json.dumps(kept, ensure_ascii=False)


class ReadForPrediction:
    """map_batches function: one read task (a byte range of one file) -> canonical sft rows + carried fields."""

    def __init__(self, attr: DatasetAttr, system: str | None):
        self.attr_json = json.dumps(asdict(attr))  # plain JSON crosses to workers, not the dataclass
        self.system = system

    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        from caregpt.data.formats import normalize
        from caregpt.data.readers import ReadTask, read_task_records

        attr = DatasetAttr(**json.loads(self.attr_json))
        rows = []
        for path, start, end, first_line in zip(batch["path"], batch["start"], batch["end"], batch["first_line"]):
            for item in read_task_records(ReadTask(str(path), int(start), int(end), int(first_line))):
                if item.error:
                    rows.append({"loc": item.loc, "dataset": attr.name, "error": item.error, "roles": [], "contents": [], "extra": "{}"})
                    continue
                record = normalize(item.value, item.loc, attr, "sft", self.system)
                rows.append({"loc": record.loc, "dataset": attr.name, "error": record.error, "roles": list(record.roles),
                             "contents": list(record.contents), "extra": _carried(item.value)})
        return pa.Table.from_pylist(rows, schema=READ_SCHEMA)


def _dataset_rows(attr: DatasetAttr, config: RunConfig):
    import ray

    from caregpt.data.pipeline import _deterministic, dataset_records
    from caregpt.data.readers import plan_read_tasks

    if attr.load_from == "hf_hub":  # the training pipeline's reader, without carried fields
        ds = dataset_records(attr, "sft", config.data.system, deidentify=config.data.deidentify).select_columns(["loc", "dataset", "error", "roles", "contents"])
        ds = ds.add_column("extra", lambda table: pa.array(["{}"] * len(table)), batch_format="pyarrow")
    else:
        tasks = [t.to_row() for t in plan_read_tasks(attr.path)]
        ds = ray.data.from_items(tasks, override_num_blocks=len(tasks))
        ds = ds.map_batches(ReadForPrediction(attr, config.data.system), batch_size=1, batch_format="numpy")
    ds = _deterministic(ds)
    return ds.limit(config.data.max_samples) if config.data.max_samples else ds


def _actor_options(config: RunConfig) -> tuple[dict[str, Any], int | None]:
    """(Ray resources per model actor, torch threads per actor)."""
    given = config.ray.resources_per_worker or {}
    workers = max(1, config.ray.num_workers)
    if config.ray.use_gpu:
        return {"num_gpus": given.get("GPU", 1), "num_cpus": given.get("CPU", 1)}, None
    cpus = given.get("CPU", 1)
    # a logical CPU is a scheduling token; the actors of one node share its physical cores
    threads = int(cpus) if "CPU" in given else max(1, (os.cpu_count() or 1) // workers)
    return {"num_cpus": cpus}, threads


def prediction_dataset(config: RunConfig, plan: PredictPlan, settings: GenerationSettings):
    """The lazy pipeline: every record of every dataset, then generated answers in input order."""
    from caregpt.data.pipeline import _deterministic

    import ray.data

    parts = [_dataset_rows(attr, config) for attr in plan.attrs]
    records = _deterministic(parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0])
    batch = max(1, config.train.per_device_eval_batch_size)
    # Blocks of exactly one batch each (streaming, order kept): a read range holds thousands of
    # records, and one block goes to one actor, so without this a small eval set would keep one actor
    # busy while the others idle. It also makes each generation batch a function of the input order
    # alone, whatever the number of actors: the same padding, hence the same greedy tokens.
    records = records.repartition(target_num_rows_per_block=batch, strict=True)
    resources, threads = _actor_options(config)
    return records.map_batches(
        PromptGenerator,
        fn_constructor_kwargs=dict(config_json=config_to_json(config), settings_json=settings.to_json(), threads=threads),
        batch_size=batch,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=max(1, config.ray.num_workers)),
        **resources,
    )


class _Progress:
    """A log line every PROGRESS_SECONDS with records done and the rate (beside Ray Data's own bar)."""

    def __init__(self):
        self.start = self.last = time.monotonic()

    def tick(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_SECONDS:
            self.last = now
            logger.info("predicted %d records (%.2f records/s)", done, done / max(now - self.start, 1e-9))


def write_predictions(dataset, path: Path) -> dict[str, Any]:
    """Stream the rows into PATH (jsonl, written beside and renamed at the end); returns counts and texts."""
    counts = {"records": 0, "predicted": 0, "invalid": 0, "prompt_truncated": 0, "prompt_tokens": 0, "new_tokens": 0}
    examples: list[dict[str, str]] = []
    invalid_by_dataset: dict[str, int] = {}
    predictions: list[str] = []
    labels: list[str] = []
    progress = _Progress()
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8") as handle:
        for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            for row in batch.to_pylist():
                counts["records"] += 1
                if row["error"]:
                    counts["invalid"] += 1
                    invalid_by_dataset[row["dataset"]] = invalid_by_dataset.get(row["dataset"], 0) + 1
                    if len(examples) < MAX_EXAMPLES:
                        examples.append({"loc": row["loc"], "error": row["error"]})
                    continue
                line = {"prompt": row["prompt"], "label": row["label"], "prediction": row["prediction"], **json.loads(row["extra"]), "loc": row["loc"]}
                handle.write(json.dumps(line, ensure_ascii=False) + "\n")
                counts["predicted"] += 1
                counts["prompt_truncated"] += int(row["prompt_truncated"])
                counts["prompt_tokens"] += row["prompt_tokens"]
                counts["new_tokens"] += row["new_tokens"]
                predictions.append(row["prediction"])
                labels.append(row["label"])
            progress.tick(counts["records"])
    partial.replace(path)
    return {"counts": counts, "examples": examples, "invalid_by_dataset": invalid_by_dataset, "predictions": predictions, "labels": labels}


def run_prediction(config: RunConfig, settings: GenerationSettings | None = None, mode: str = "predict") -> PredictOutcome:
    """Plan on the driver, run the actor pool, write generated_predictions.jsonl and predict_results.json.

    mode "eval" (CareGPT's `--do_eval --predict_with_generate` without training) scores the answers and
    writes them as eval_* metrics to eval_results.json instead.
    """
    from caregpt.runtime import ensure_ray

    from caregpt.train.launch import precision_note

    settings = settings or settings_for(config)
    plan = plan_prediction(config, mode)
    note = precision_note(config, "predicts")
    if note:
        logger.warning(note)
    ensure_ray(config.ray.ray_address)
    _warn_if_no_gpus(config)
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    written = write_predictions(prediction_dataset(config, plan, settings), plan.output_dir / PREDICTIONS_NAME)
    runtime = time.monotonic() - started
    counts = written["counts"]
    results: dict[str, Any] = {}
    prefix = "eval" if mode == "eval" else "predict"
    if (config.train.do_eval or mode == "eval") and counts["predicted"]:
        from caregpt.eval.metrics import generation_scores

        scores = generation_scores(written["predictions"], written["labels"])
        results.update({f"{prefix}_{key}": value for key, value in scores.items()})
    results.update({
        f"{prefix}_samples": counts["predicted"],
        f"{prefix}_runtime": round(runtime, 3),
        f"{prefix}_samples_per_second": round(counts["predicted"] / max(runtime, 1e-9), 3),
        f"{prefix}_tokens_per_second": round(counts["new_tokens"] / max(runtime, 1e-9), 3),
    })
    results.update(
        **counts,
        invalid_by_dataset=written["invalid_by_dataset"],
        invalid_examples=written["examples"],
        model=plan.model,
        adapters=plan.adapters,
        template=config.data.template,
        generation=asdict(settings),
        num_workers=config.ray.num_workers,
        config=config.flat(),  # not caregpt_config.yaml: output_dir may be a training dir whose config must stay
    )
    results_name = EVAL_RESULTS_NAME if mode == "eval" else RESULTS_NAME
    (plan.output_dir / results_name).write_text(json.dumps(results, ensure_ascii=False, indent=2), encoding="utf-8")
    _log_summary(plan, counts, written["examples"], runtime)
    return PredictOutcome(output_dir=plan.output_dir, results=results, invalid_examples=written["examples"])


def _warn_if_no_gpus(config: RunConfig) -> None:
    import ray

    if config.ray.use_gpu and ray.cluster_resources().get("GPU", 0) < 1:
        logger.warning("use_gpu is set but the Ray cluster has no GPU now: the model actors wait until one joins")


def _log_summary(plan: PredictPlan, counts: dict[str, int], examples: list[dict[str, str]], runtime: float) -> None:
    logger.info(
        "%d records: %d predicted, %d invalid, %d prompts truncated to cutoff_len; %.1f s -> %s",
        counts["records"], counts["predicted"], counts["invalid"], counts["prompt_truncated"], runtime, plan.output_dir / PREDICTIONS_NAME,
    )
    for example in examples:
        logger.warning("invalid %s: %s", example["loc"], example["error"])
