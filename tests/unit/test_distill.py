"""Distillation parts without Ray: config checks, seed ids, retry timing, rate limit, parsing, filters, dedup, resume log,
registry updates, and every kind end to end on local threads against our own stand-in server."""

from __future__ import annotations

import json
import random
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from caregpt.config.loader import ConfigError
from caregpt.data.formats import dataset_kind, normalize
from caregpt.data.readers import iter_file_records
from caregpt.data.registry import resolve_datasets
from caregpt.distill.cli import main as distill_main
from caregpt.distill.client import backoff_delay, parse_retry_after
from caregpt.distill.config import DistillConfig, build_distill_config
from caregpt.distill.dedup import find_duplicates
from caregpt.distill.output import register_dataset
from caregpt.distill.ratelimit import TokenBucket
from caregpt.distill.run import run_distill
from caregpt.distill.seeds import seed_id
from caregpt.distill.store import ResumeStore
from caregpt.distill.tasks import ContentError, parse_dialogue, parse_verdict
from caregpt.distill.validate import RecordChecker
from tests.openai_fault_server import ChatStandIn, answer_text, serve


def _config(**values):
    values.setdefault("seeds", ["发热"])
    return build_distill_config({k: (v, "test") for k, v in values.items()})


def test_config_errors_name_the_key_and_the_fix():
    with pytest.raises(ConfigError, match="did you mean 'concurrency'"):
        _config(concurency=2)
    with pytest.raises(ConfigError, match=r"answer_template uses \{topic\}.*\{question\}"):
        _config(answer_template="回答：{topic}")
    with pytest.raises(ConfigError, match="exactly one seed source"):
        _config(seeds_file="seeds.txt")
    with pytest.raises(ConfigError, match="must be one of"):
        _config(kind="essay")
    assert _config(seeds="发热,咳嗽", concurrency="3").seeds == ["发热", "咳嗽"]


def test_help_explains_every_option(capsys):
    assert distill_main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, field in DistillConfig.model_fields.items():
        assert f"--{name} " in out and field.description
    assert distill_main(["--kind", "essay", "--seeds", "x"]) == 2


def test_seed_ids_are_stable_and_change_with_what_shapes_the_output():
    base = _config()
    assert seed_id(base, "发热", 0) == seed_id(_config(), "发热", 0)
    assert seed_id(base, "发热", 0) != seed_id(base, "发热", 1)
    assert seed_id(base, "发热", 0) != seed_id(_config(answer_template="简短回答：{question}"), "发热", 0)
    assert seed_id(base, "发热", 0) != seed_id(_config(kind="kb_document"), "发热", 0)
    assert seed_id(base, "发热", 0) == seed_id(_config(model="another-teacher", temperature=0.1), "发热", 0)


def test_retry_after_parsing_and_backoff_growth():
    assert parse_retry_after(httpx.Headers({"retry-after": "2"})) == 2.0
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "1500", "retry-after": "9"})) == 1.5
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 < parse_retry_after(httpx.Headers({"retry-after": later})) <= 30
    assert parse_retry_after(httpx.Headers({"retry-after": "soon"})) is None and parse_retry_after(httpx.Headers({})) is None
    rng = random.Random(0)
    waits = [[backoff_delay(n, 1.0, 8.0, rng) for _ in range(200)] for n in (1, 2, 3, 4, 5)]
    for n, samples in enumerate(waits, start=1):
        ceiling = min(8.0, 2 ** (n - 1))
        assert ceiling / 2 <= min(samples) and max(samples) <= ceiling  # equal jitter: never below half the step
        assert len({round(s, 6) for s in samples}) > 100  # jittered: workers do not retry in step


def test_token_bucket_spaces_requests_and_pauses_on_retry_after():
    now = [0.0]
    bucket = TokenBucket(rate=4, burst=1, clock=lambda: now[0])
    waits = [bucket.reserve() for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    now[0] = 10.0
    assert bucket.reserve() == 0.0
    bucket.pause(3.0)
    assert bucket.reserve() >= 3.0


def test_dialogue_and_verdict_parsing():
    reply = '```json\n[{"role": "user", "content": "头痛"}, {"role": "assistant", "content": "多休息"}, ' \
            '{"role": "user", "content": "要吃药吗"}, {"role": "assistant", "content": "可以短期服用"}]\n```'
    assert parse_dialogue(reply) == [("头痛", "多休息"), ("要吃药吗", "可以短期服用")]
    assert parse_dialogue('{"dialogue": [{"from": "患者", "value": "a"}, {"from": "医生", "value": "b"}]}') == [("a", "b")]
    for bad in ("没有 JSON", '[{"role": "assistant", "content": "x"}]', '[{"role": "user", "content": "x"}]'):
        with pytest.raises(ContentError):
            parse_dialogue(bad)
    assert parse_verdict('{"better": "B", "reason": "..."}') == "B"
    assert parse_verdict("A。回答A更完整") == "A"
    with pytest.raises(ContentError):
        parse_verdict("两个都不错")


def test_record_filters():
    checker = RecordChecker(_config(min_chars=5, max_chars=200))
    sft = lambda answer: {"instruction": "发热怎么办", "input": "", "output": answer, "history": []}  # noqa: E731
    assert checker.check(sft("多喝水，注意休息，必要时就医。"), ["stop"]) is None
    assert checker.check(sft("   "), ["stop"]) == "empty"
    assert checker.check(sft("抱歉，作为一个AI语言模型，我无法回答。"), ["stop"]) == "refusal"
    assert checker.check(sft("I'm sorry, but I can't help with that request."), ["stop"]) == "refusal"
    assert checker.check(sft("Drink water and rest, see a doctor if it persists."), ["stop"]) == "language"
    assert checker.check(sft("好。"), ["stop"]) == "too_short"
    assert checker.check(sft("多" * 300), ["stop"]) == "too_long"
    assert checker.check(sft("多喝水，注意休息，必要时就医。"), ["length"]) == "truncated"
    assert checker.check(sft("目前无法确诊，建议尽快到医院检查。"), ["stop"]) is None  # medical caution is not a refusal
    pref = RecordChecker(_config(kind="preference", min_chars=5))
    assert pref.check({"instruction": "q", "output": ["同一个回答内容", "同一个回答内容"]}, ["stop"]) == "identical_pair"


def test_exact_and_near_duplicates():
    a = answer_text("seed-a")
    texts = [a, answer_text("seed-b"), a.replace("。", "！"), a[:-6] + "请尽快就医吧", answer_text("seed-c")]
    dropped = find_duplicates(texts, threshold=0.85, ngram=3)
    assert dropped == {2: ("exact_duplicate", 0), 3: ("near_duplicate", 0)}
    assert find_duplicates(texts, threshold=0) == {2: ("exact_duplicate", 0)}


def test_resume_log_cuts_a_partial_line_and_refuses_duplicates(tmp_path):
    with ResumeStore(tmp_path) as store:
        assert store.append({"id": "a", "record": {}}) and store.append({"id": "b", "record": {}})
        assert not store.append({"id": "a", "record": {}})
    with open(tmp_path / "raw.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"id": "c", "rec')  # killed mid-write
    with ResumeStore(tmp_path) as store:
        assert set(store.entries) == {"a", "b"} and store.repaired_lines == 1
        with pytest.raises(ConfigError, match="another distill run"):
            ResumeStore(tmp_path).__enter__()
    assert [json.loads(line)["id"] for line in (tmp_path / "raw.jsonl").read_text().splitlines()] == ["a", "b"]


def test_registry_update_keeps_other_entries_and_never_clobbers_a_broken_file(tmp_path):
    registry = tmp_path / "dataset_info.json"
    registry.write_text(json.dumps({"other": {"file_name": "other.jsonl"}, "mine": {"file_name": "old.jsonl"}}), encoding="utf-8")
    _, action = register_dataset(tmp_path, "mine", {"file_name": "new.jsonl"})
    data = json.loads(registry.read_text(encoding="utf-8"))
    assert action == "updated" and data == {"other": {"file_name": "other.jsonl"}, "mine": {"file_name": "new.jsonl"}}
    assert register_dataset(tmp_path, "mine", {"file_name": "new.jsonl"})[1] == "unchanged"
    registry.write_text("{broken", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid JSON"):
        register_dataset(tmp_path, "mine", {"file_name": "x.jsonl"})
    assert registry.read_text(encoding="utf-8") == "{broken"


@pytest.mark.parametrize("kind", ["sft", "multiturn", "preference", "kb_document"])
def test_every_kind_writes_data_the_training_registry_reads(tmp_path, kind):
    standin = ChatStandIn()
    seeds = ["发热", "咳嗽", "腹泻", "失眠"]
    with serve(standin.app()) as base_url:
        config = _config(kind=kind, seeds=seeds, base_url=base_url, model="standin", output_dir=str(tmp_path / "out"),
                         dataset_dir=str(tmp_path), dataset_name=f"d_{kind}", concurrency=4, rate_limit=0, timeout=5,
                         question_template="关于{seed}的问题" if kind == "preference" else None)
        report = run_distill(config, use_ray=False)
    assert report.accounted and report.failed == 0 and report.records_written == len(seeds)
    (attr,) = resolve_datasets([f"d_{kind}"], tmp_path)
    expected_kind = {"sft": "sft", "multiturn": "sft", "preference": "pref", "kb_document": "text"}[kind]
    assert dataset_kind(attr) == expected_kind
    records = [normalize(r.value, r.loc, attr, expected_kind) for r in iter_file_records(attr.path)]
    assert len(records) == len(seeds) and not [r.error for r in records if r.error]
    if kind == "multiturn":
        assert all(len(r.roles) == 6 for r in records)  # three rounds: history of two pairs + the last pair
    if kind == "preference":
        assert report.requests == 4 * len(seeds)  # question, two answers, judge
        # the stand-in judge prefers the longer answer, whichever position it was shown in
        assert all(len(r.chosen) > len(r.rejected) for r in records)
    assert report.prompt_tokens > 0 and report.completion_tokens > 0
