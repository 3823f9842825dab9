"""The Ray Data pipeline on a real local Ray with the tiny model's tokenizer and the test data."""

from __future__ import annotations

import json

import pytest

from caregpt.config.loader import ConfigError, load_config
from caregpt.data import pipeline
from caregpt.data.check import InvalidDataError, check_data
from caregpt.data.formats import normalize
from caregpt.data.pipeline import build_token_dataset, plan_data
from caregpt.data.prepare import MANIFEST, prepare
from caregpt.data.readers import iter_file_records
from caregpt.data.templates import get_template
from caregpt.data.tokenize import load_tokenizer

pytestmark = pytest.mark.ray


def _config(registry_dir, **values):
    return load_config(None, {"dataset_dir": str(registry_dir), **{k: str(v) for k, v in values.items()}})


@pytest.fixture(scope="module")
def registry(tmp_path_factory, test_data):
    """A dataset_info.json pointing at the test files (by absolute path) plus a small broken file."""
    root = tmp_path_factory.mktemp("registry")
    lines = (test_data / "sft_cmtmedqa_multiturn.jsonl").read_text(encoding="utf-8").splitlines()[:120]
    lines[10] = '{"instruction": "", "output": "x"}'
    lines[20] = "{not json"
    (root / "cmt_broken.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    entries = {
        "cmt": {"file_name": str(test_data / "sft_cmtmedqa_multiturn.jsonl")},
        "toyhom": {"file_name": str(test_data / "sft_toyhom_im_department.jsonl")},
        "fever": {"file_name": str(test_data / "pretrain_medicalgpt_fever.txt")},
        "pref": {"file_name": str(test_data / "pref_medicalgpt_medical_reward.jsonl"), "ranking": True},
        "broken": {"file_name": "cmt_broken.jsonl"},
        "hub": {"hf_hub_url": "nobody/no-such-dataset"},
    }
    (root / "dataset_info.json").write_text(json.dumps(entries))
    return root


def _rows_by_loc(ds):
    return {row["loc"]: row for row in ds.iter_rows()}


@pytest.mark.parametrize("strategy", ["tasks", "actor pool"])
def test_sft_tokens_equal_a_direct_tokenizer_call(ray_local, registry, tiny_model, strategy, monkeypatch):
    if strategy == "actor pool":  # what a corpus above SMALL_INPUT_BYTES goes through
        monkeypatch.setattr(pipeline, "SMALL_INPUT_BYTES", 0)
    config = _config(registry, dataset="cmt", template="chatml", cutoff_len=256, max_samples=120)
    ds, plan = build_token_dataset(config, tiny_model)
    rows = _rows_by_loc(ds)
    assert len(rows) == 120
    assert ("ArrowBatchTokenizer" if strategy == "actor pool" else "tokenize_block") in ds.stats()
    tokenizer = load_tokenizer(tiny_model)
    template = get_template("chatml", tokenizer)
    (attr,) = plan.attrs
    multi_turn = 0
    for raw in list(iter_file_records(attr.path))[:120]:
        record = normalize(raw.value, raw.loc, attr, "sft")
        expected = template.encode(tokenizer, record.messages, cutoff_len=256)
        got = rows[raw.loc]
        assert list(got["input_ids"]) == expected.input_ids
        assert list(got["labels"]) == expected.labels
        assert got["truncated"] == expected.truncated
        multi_turn += record.roles.count("assistant") > 1
    assert multi_turn > 50  # the check really covered multi-turn label masking


def test_pretraining_text_is_split_not_truncated(ray_local, registry, tiny_model, test_data):
    config = _config(registry, dataset="fever", stage="pt", cutoff_len=64, max_samples=50)
    ds, _ = build_token_dataset(config, tiny_model)
    tokenizer = load_tokenizer(tiny_model)
    by_doc: dict[str, list[int]] = {}
    for row in sorted(ds.iter_rows(), key=lambda r: r["loc"]):
        assert len(row["input_ids"]) <= 64 and list(row["labels"]) == list(row["input_ids"])
        by_doc.setdefault(row["loc"], []).extend(row["input_ids"])
    docs = [line for line in (test_data / "pretrain_medicalgpt_fever.txt").read_text(encoding="utf-8").splitlines() if line.strip()][:50]
    assert len(by_doc) == 50
    for loc, ids in by_doc.items():
        line_no = int(loc.rsplit(":", 1)[1])
        text = (test_data / "pretrain_medicalgpt_fever.txt").read_text(encoding="utf-8").splitlines()[line_no - 1]
        expected = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        # a chunk holding only the final eos predicts nothing and is left out; every other token stays
        dropped = 1 if len(expected) % 64 == 1 and len(expected) > 64 else 0
        assert ids == expected[: len(expected) - dropped]
    assert docs  # the sample corpus is not empty


def test_packing_through_ray_preserves_every_token(ray_local, registry, tiny_model):
    base = dict(dataset="toyhom", template="chatml", cutoff_len=256, max_samples=300)
    plain, _ = build_token_dataset(_config(registry, **base), tiny_model)
    packed, _ = build_token_dataset(_config(registry, packing="true", **base), tiny_model)
    samples = sorted(tuple(r["input_ids"]) for r in plain.iter_rows())
    recovered, rows = [], 0
    for row in packed.iter_rows():
        rows += 1
        assert len(row["input_ids"]) <= 256
        start = 0
        for n in row["seq_lens"]:
            recovered.append(tuple(row["input_ids"][start : start + n]))
            assert list(row["position_ids"][start : start + n]) == list(range(n))
            start += n
    assert sorted(recovered) == samples
    assert rows < len(samples)  # packing actually removed padding rows


def test_preference_pairs_tokenize_both_sides(ray_local, registry, tiny_model):
    ds, plan = build_token_dataset(_config(registry, dataset="pref", stage="dpo", template="chatml", cutoff_len=512), tiny_model)
    rows = list(ds.iter_rows())
    assert len(rows) == 100 and plan.kind == "pref"
    for row in rows:
        chosen, rejected = list(row["chosen_input_ids"]), list(row["rejected_input_ids"])
        assert chosen != rejected
        # both sides share the prompt: the labels start at the same position
        first = next(i for i, x in enumerate(row["chosen_labels"]) if x != -100)
        assert chosen[:first] == rejected[:first]


def test_mix_strategies_and_max_samples(ray_local, registry, tiny_model):
    both = dict(dataset="cmt,toyhom", template="chatml", cutoff_len=128, max_samples=40)
    concat, _ = build_token_dataset(_config(registry, **both), tiny_model)
    assert concat.count() == 80
    under, _ = build_token_dataset(_config(registry, mix_strategy="interleave_under", interleave_probs="0.5,0.5", **both), tiny_model)
    names = [r["dataset"] for r in under.iter_rows()]
    assert names.count("cmt") == names.count("toyhom") == 40
    # interleaved: the first ten rows already mix both datasets
    assert set(names[:10]) == {"cmt", "toyhom"}


def test_check_report_counts_everything(ray_local, registry, tiny_model):
    report = check_data(_config(registry, dataset="broken", template="chatml", cutoff_len=256), tiny_model)
    (d,) = report.datasets
    assert (d.records, d.valid, d.invalid) == (120, 118, 2)
    locs = [loc.rsplit(":", 1)[1] for loc, _ in d.examples]
    assert locs == ["11", "21"]
    assert d.over_cutoff > 0 and d.lengths["max"] > 256 and d.trainable_tokens > 0
    text = report.format()
    assert "cmt_broken.jsonl:11" in text and "invalid JSON" in text and "exceed cutoff_len=256" in text


def test_prepare_refuses_invalid_then_caches(ray_local, registry, tiny_model, tmp_path):
    with pytest.raises(InvalidDataError, match="2 of 120 records are invalid"):
        prepare(_config(registry, dataset="broken", template="chatml", tokenized_path=tmp_path / "x"), tiny_model)
    config = _config(registry, dataset="broken", template="chatml", skip_invalid="true", tokenized_path=tmp_path / "tok")
    path, manifest = prepare(config, tiny_model)
    assert (manifest["records"], manifest["records_used"], manifest["records_rejected"]) == (120, 118, 2)
    stamp = (path / MANIFEST).stat().st_mtime_ns
    again, _ = prepare(config, tiny_model)
    assert again == path and (path / MANIFEST).stat().st_mtime_ns == stamp  # reused, not redone
    config.data.overwrite_cache = True
    prepare(config, tiny_model)
    assert (path / MANIFEST).stat().st_mtime_ns != stamp
    from caregpt.data.prepare import load_prepared

    assert load_prepared(path).count() == 118


def test_driver_side_errors_before_any_work(registry):
    with pytest.raises(ConfigError, match="stage 'sft' needs instruction data"):
        plan_data(_config(registry, dataset="fever"))
    with pytest.raises(ConfigError, match="interleave_probs has 1 values for 2 datasets"):
        plan_data(_config(registry, dataset="cmt,toyhom", interleave_probs="1.0"))


def test_hub_dataset_without_a_hub_fails_clearly(ray_local, registry, tiny_model):
    with pytest.raises(ConfigError, match=r"could not load hf_hub_url 'nobody/no-such-dataset'.*hub reachable"):
        build_token_dataset(_config(registry, dataset="hub", template="chatml"), tiny_model)
