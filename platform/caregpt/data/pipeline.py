"""The Ray Data pipeline: read -> validate -> render template -> tokenize -> (pack).

Everything is a lazy, streaming `ray.data.Dataset`: the driver only plans byte ranges, so a corpus
never has to fit in driver memory, and Ray Train workers consume the result by shard.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from caregpt.config.loader import ConfigError
from caregpt.config.specs import RunConfig
from caregpt.data.formats import Kind, STAGE_KINDS, check_stage_kind, normalize
from caregpt.data.readers import RawRecord, ReadTask, plan_read_tasks, read_task_records
from caregpt.data.registry import DatasetAttr, check_file, resolve_datasets

RECORD_SCHEMA = pa.schema(
    [
        ("loc", pa.string()),
        ("dataset", pa.string()),
        ("error", pa.string()),
        ("text", pa.string()),
        ("roles", pa.list_(pa.string())),
        ("contents", pa.list_(pa.string())),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("ordinal", pa.int64()),
    ]
)


@dataclass
class DataPlan:
    """What the driver decided before any Ray work: which datasets, of which kind."""

    kind: Kind
    attrs: list[DatasetAttr]


def plan_data(config: RunConfig) -> DataPlan:
    """Resolve and check every dataset on the driver; raises ConfigError with a fix."""
    attrs = resolve_datasets(config.data.dataset, config.data.dataset_dir, config.data.dataset_info)
    for attr in attrs:
        check_file(attr)
        check_stage_kind(config.finetune.stage, attr)
    if config.data.interleave_probs and len(config.data.interleave_probs) != len(attrs):
        raise ConfigError(f"interleave_probs has {len(config.data.interleave_probs)} values for {len(attrs)} datasets")
    return DataPlan(kind=STAGE_KINDS[config.finetune.stage], attrs=attrs)


def _ordinal(loc: str) -> int:
    tail = loc.rsplit(":", 1)[-1]
    digits = "".join(ch for ch in tail if ch.isdigit())
    return int(digits) if digits else 0


def _deidentified(item: RawRecord) -> RawRecord:
    from caregpt.data.deid import deidentify_record, deidentify_texts

    if item.error:
        return item
    if isinstance(item.value, dict):
        return RawRecord(item.loc, deidentify_record(item.value)[0])
    if isinstance(item.value, str):  # a line of pretraining text
        return RawRecord(item.loc, deidentify_texts([item.value])[0][0])
    return item


def records_to_table(raw: list[RawRecord], attr: DatasetAttr, kind: Kind, system: str | None, deidentify: bool = False) -> pa.Table:
    rows = []
    if deidentify:  # mask identifiers in the raw record, before anything derived from its text exists
        raw = [_deidentified(item) for item in raw]
    for item in raw:
        if item.error:
            row = {"loc": item.loc, "dataset": attr.name, "error": item.error, "text": "", "roles": [], "contents": [], "chosen": "", "rejected": ""}
        else:
            row = normalize(item.value, item.loc, attr, kind, system).to_row()
        row["ordinal"] = _ordinal(item.loc)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)


class ReadAndNormalize:
    """map_batches function: one read task (a byte range of one file) -> its canonical records."""

    def __init__(self, attr: DatasetAttr, kind: Kind, system: str | None, deidentify: bool = False):
        # plain JSON rather than the dataclass: what crosses to Ray workers stays version-proof
        self.attr_json = json.dumps(asdict(attr))
        self.kind = kind
        self.system = system
        self.deidentify = deidentify

    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        attr = DatasetAttr(**json.loads(self.attr_json))
        tables = []
        for path, start, end, first_line in zip(batch["path"], batch["start"], batch["end"], batch["first_line"]):
            task = ReadTask(str(path), int(start), int(end), int(first_line))
            tables.append(records_to_table(list(read_task_records(task)), attr, self.kind, self.system, self.deidentify))
        return pa.concat_tables(tables) if tables else RECORD_SCHEMA.empty_table()


def _hub_records(attr: DatasetAttr, kind: Kind, system: str | None, deidentify: bool = False):
    import ray

    try:
        import datasets

        hub = datasets.load_dataset(attr.path, split=attr.split)
    except Exception as exc:  # noqa: BLE001 - any failure here means "the hub copy is not available"
        raise ConfigError(
            f"dataset {attr.name!r}: could not load hf_hub_url {attr.path!r} ({type(exc).__name__}: {str(exc)[:200]}). "
            "Is a model/dataset hub reachable from here? Otherwise download the data where it is, copy the file "
            "next to dataset_info.json and register it with file_name."
        ) from None
    items = [RawRecord(f"{attr.path}:record {i + 1}", row) for i, row in enumerate(hub)]
    return ray.data.from_arrow(records_to_table(items, attr, kind, system, deidentify))


def dataset_records(attr: DatasetAttr, kind: Kind, system: str | None = None, max_samples: int | None = None, deidentify: bool = False):
    """All records of one dataset (valid and invalid) as a lazy Ray Dataset of RECORD_SCHEMA rows."""
    import ray

    if attr.load_from == "hf_hub":
        ds = _hub_records(attr, kind, system, deidentify)
    else:
        tasks = [t.to_row() for t in plan_read_tasks(attr.path)]
        ds = ray.data.from_items(tasks, override_num_blocks=len(tasks))
        ds = ds.map_batches(ReadAndNormalize(attr, kind, system, deidentify), batch_size=1, batch_format="numpy")
    return _deterministic(ds).limit(max_samples) if max_samples else ds


def _interleave(parts: list, probs: list[float] | None, strategy: str):
    """Mix datasets by position: record j of dataset i is due at time j / p_i; sort by that time.

    interleave_under stops when the first dataset runs out; interleave_over repeats the smaller
    datasets until the largest one is used up.
    """
    counts = [max(1, part.count()) for part in parts]
    probs = probs or [1.0] * len(parts)
    total = sum(probs)
    probs = [p / total for p in probs]
    horizon = (min if strategy == "interleave_under" else max)(n / p for n, p in zip(counts, probs))
    mixed = []
    for part, count, prob in zip(parts, counts, probs):
        repeats = max(1, math.ceil(horizon * prob / count))
        for rep in range(repeats):
            def due(table: pa.Table, rep=rep, count=count, prob=prob) -> pa.Table:
                # ordinals are 1-based line / record numbers; ranks start at 0
                ranks = pc.add(pc.cast(table["ordinal"], pa.float64()), float(rep * count - 1))
                return table.append_column("_due", pc.divide(ranks, prob))

            mixed.append(part.map_batches(due, batch_format="pyarrow"))
    ds = mixed[0].union(*mixed[1:]) if len(mixed) > 1 else mixed[0]
    ds = ds.filter(expr=f"_due < {horizon}") if strategy == "interleave_under" else ds
    return ds.sort("_due").drop_columns(["_due"])


def build_records(config: RunConfig, plan: DataPlan):
    """Every record of every requested dataset, mixed per mix_strategy."""
    parts = [dataset_records(a, plan.kind, config.data.system, config.data.max_samples, config.data.deidentify) for a in plan.attrs]
    if len(parts) == 1:
        records = parts[0]
    elif config.data.mix_strategy == "concat":
        records = parts[0].union(*parts[1:])
    else:
        records = _interleave(parts, config.data.interleave_probs, config.data.mix_strategy)
    return _deterministic(records)


def _deterministic(ds):
    """Same data, same order, every run: max_samples takes the first N records and a resumed
    training run finds its data position again. Costs a little reordering, not parallelism."""
    ds.context.execution_options.preserve_order = True
    return ds


def only_valid(table: pa.Table) -> pa.Table:
    return table.filter(pc.equal(table["error"], ""))


def tokenize_records(records, config: RunConfig, plan: DataPlan, tokenizer_path: str, num_workers: int | None = None):
    """Valid records -> token rows (see BatchTokenizer), packed when `packing` is on."""
    import ray.data

    from caregpt.data.packing import PackBatch
    from caregpt.data.tokenize import ArrowBatchTokenizer, tokenize_block

    workers = num_workers or config.data.preprocessing_num_workers or 2
    settings = dict(tokenizer_path=tokenizer_path, kind=plan.kind, template=config.data.template,
                    cutoff_len=config.data.cutoff_len, trust_remote_code=config.model.trust_remote_code)
    # one block per call (batch_size=None): Ray fuses the read stage into this stage, and a row batch size
    # would be counted in READ TASKS, putting a whole corpus into a single call
    valid = records.map_batches(only_valid, batch_format="pyarrow")
    if input_bytes(plan) <= SMALL_INPUT_BYTES:
        # Tasks run in Ray's pooled worker processes, which keep the tokenizer from one run to the next: a small
        # dataset (the usual clinical fine-tune) starts tokenizing at once instead of waiting ~2 s for new actors.
        # A small dataset is one block, so Ray Data warns that the task limit exceeds the inputs: expected.
        warnings.filterwarnings("ignore", message=r"The maximum number of concurrent tasks for 'MapBatches\(tokenize_block\)'", category=UserWarning)
        tokens = valid.map_batches(tokenize_block, fn_kwargs=settings, batch_size=None, batch_format="numpy",
                                   compute=ray.data.TaskPoolStrategy(size=max(1, workers)))
    else:
        # A larger corpus goes through an actor pool. Measured with benchmarks/data_pipeline.py (2 cores): at
        # 50,000 records (37 MiB) tasks were no faster (15.8 s vs 15.0 s), and at 500,000 (374 MiB) they held
        # 1.47x the memory of the 50,000 run (pooled workers keep their arrays) where the actor pool holds 1.02x.
        tokens = valid.map_batches(ArrowBatchTokenizer, fn_constructor_kwargs=settings, batch_size=None, batch_format="numpy",
                                   compute=_actor_pool(workers))
    if config.data.packing and plan.kind != "pref":
        tokens = tokens.map_batches(PackBatch(config.data.cutoff_len), batch_size=2048, batch_format="numpy")
    return tokens


# Below this much input (every dataset file together) tokenizing runs as Ray tasks, above it on an actor pool.
SMALL_INPUT_BYTES = 16 * 1024 * 1024


def input_bytes(plan: DataPlan) -> int:
    """Bytes of the plan's local files (a hub dataset counts as large: its size is not known here)."""
    from pathlib import Path

    total = 0
    for attr in plan.attrs:
        if attr.load_from != "file":
            return SMALL_INPUT_BYTES + 1
        total += Path(attr.path).stat().st_size
    return total


def _actor_pool(size: int):
    import ray.data

    # an elastic pool: it never holds every CPU while upstream read tasks still wait to run
    return ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, size))


def build_token_dataset(config: RunConfig, tokenizer_path: str, num_workers: int | None = None):
    """Plan on the driver, then the whole lazy pipeline."""
    plan = plan_data(config)
    return tokenize_records(build_records(config, plan), config, plan, tokenizer_path, num_workers), plan
