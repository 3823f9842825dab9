"""Department triage: catalog loading, the label mapping, accuracy above chance, reasons, model re-ranking."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from caregpt.medical.catalog import CatalogError, load_catalog
from caregpt.medical.department_map import DEPARTMENT_MAP, UNMAPPED, resolve_targets
from caregpt.medical.eval_cli import main as eval_main
from caregpt.medical.triage import DepartmentTriage
from caregpt.medical.triage_cli import main as triage_main
from caregpt.medical.triage_eval import evaluate_triage
from caregpt.medical.triage_model import TriageModel

DATA = ("sft_toyhom_im_department.jsonl", "sft_cmtmedqa_multiturn.jsonl")


@pytest.fixture(scope="module")
def guides(test_data):
    return test_data / "hospital_guide_departments.json"


@pytest.fixture(scope="module")
def triage(guides):
    return DepartmentTriage(load_catalog(guides), classifier=None)  # retrieval alone (the fused triage: test_triage_fused.py)


def test_catalog_has_sixty_departments_in_groups(guides, tmp_path):
    catalog = load_catalog(guides)
    assert len(catalog.names) == len(set(catalog.names)) == 60
    groups = catalog.groups()
    assert "心内科" in groups["内科"] and "骨科" in groups["外科"] and groups["皮肤科"] == ["皮肤科"]
    short = tmp_path / "guides.json"
    short.write_text(json.dumps([{"content": "心内科是……"}], ensure_ascii=False), encoding="utf-8")
    (tmp_path / "hospital_guide_catalog.txt").write_text((guides.parent / "hospital_guide_catalog.txt").read_text("utf-8"), "utf-8")
    with pytest.raises(CatalogError, match="lists 60 departments but"):
        load_catalog(short)
    with pytest.raises(CatalogError, match="not found"):
        load_catalog(tmp_path / "nothing.json")


def test_mapping_covers_every_label_of_both_files_or_says_why_not(test_data, guides):
    catalog = load_catalog(guides)
    labels = set()
    for name in DATA:
        with open(test_data / name, encoding="utf-8") as handle:
            labels |= {str(json.loads(line).get("department") or "") for line in handle}
    assert labels <= set(DEPARTMENT_MAP) | set(UNMAPPED), labels - set(DEPARTMENT_MAP) - set(UNMAPPED)
    for label in DEPARTMENT_MAP:  # every target is a real catalog department or group
        assert resolve_targets(label, catalog) <= set(catalog.names)
    assert resolve_targets("外科", catalog) == set(catalog.groups()["外科"])
    assert all(reason for reason in UNMAPPED.values())


def test_top3_accuracy_is_clearly_above_chance_on_a_sample(test_data, guides):
    report = evaluate_triage([test_data / name for name in DATA], guides, limit=150, classifier=None, by_split=False)
    for result in report.files:
        assert result.scored >= 100
        print(f"{result.file}: top-1 {result.rate(result.top1):.2f} top-3 {result.rate(result.top3):.2f} "
              f"(chance {result.rate(result.chance_top3):.2f})")
        assert result.rate(result.top3) >= result.rate(result.chance_top3) + 0.25
        assert result.rate(result.top1) >= result.rate(result.chance_top1) + 0.15
        assert result.top1 <= result.top3
    cmt = report.files[1]
    assert cmt.scored + sum(cmt.unmapped.values()) + cmt.no_text == cmt.records  # nothing dropped silently
    assert "家居健康" in cmt.unmapped and "no catalog counterpart" in report.format()


def test_unknown_labels_are_reported(tmp_path, guides):
    data = tmp_path / "d.jsonl"
    rows = [{"instruction": "皮肤很痒起红疹", "department": "皮肤科"}, {"instruction": "头痛", "department": "火星科"},
            {"instruction": "在家怎么收纳药品", "department": "家居健康"}]
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    result = evaluate_triage([data], guides, by_split=False).files[0]
    assert (result.records, result.scored, result.unknown, result.unmapped) == (3, 1, {"火星科": 1}, {"家居健康": 1})


def test_recommendations_come_from_the_catalog_with_guide_sentences_as_reasons(triage):
    result = triage.recommend("皮肤上起了很多红疹子，特别痒", k=3)
    assert result.method == "retrieval" and len(result.recommendations) == 3
    assert result.recommendations[0].department == "皮肤科"
    for rec in result.recommendations:
        guide = triage.catalog.get(rec.department).guide
        assert rec.reasons and all(reason in guide for reason in rec.reasons)
    scores = [r.score for r in result.recommendations]
    assert scores == sorted(scores, reverse=True)
    fallback = triage.recommend("qwerty", k=3)
    assert fallback.method == "fallback" and fallback.recommendations[0].department == "全科医学"
    with pytest.raises(ValueError, match="empty"):
        triage.recommend("  ")


class _Chat(BaseHTTPRequestHandler):
    """A stand-in chat model: picks the last candidate department it was offered (or answers `reply`)."""

    reply = None
    offered: list = []

    def do_POST(self):  # noqa: N802
        prompt = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["messages"][0]["content"]
        candidates = [line[2:].split("：")[0] for line in prompt.splitlines() if line.startswith("- ")]
        _Chat.offered = candidates
        content = self.reply if self.reply is not None else json.dumps(
            {"departments": [{"name": candidates[-1], "reason": "模型的理由"}, {"name": "不存在科", "reason": "x"}]},
            ensure_ascii=False)
        payload = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture()
def chat_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Chat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()
    _Chat.reply = None


def test_a_served_model_reranks_the_candidates(triage, chat_server):
    model = TriageModel(f"http://127.0.0.1:{chat_server.server_port}/v1", "stand-in")
    retrieval = triage.recommend("经常胃痛反酸", k=3)
    result = triage.recommend("经常胃痛反酸", k=3, model=model)
    assert result.method == "retrieval+model" and len(result.recommendations) == 3
    assert _Chat.offered[0] == retrieval.recommendations[0].department and len(_Chat.offered) > 3
    assert result.recommendations[0].department == _Chat.offered[-1]  # the model's choice, not retrieval's first
    assert result.recommendations[0].reasons[0] == "模型的理由"
    assert result.recommendations[1].department == retrieval.recommendations[0].department  # filled from retrieval
    _Chat.reply = "我觉得应该去看医生。"  # no JSON: retrieval stands, with a note
    kept = triage.recommend("经常胃痛反酸", k=3, model=model)
    assert kept.method == "retrieval" and "model not used" in kept.notes[0]
    offline = triage.recommend("经常胃痛反酸", k=3, model=TriageModel("http://127.0.0.1:9/v1", "x", timeout=2))
    assert offline.method == "retrieval" and "cannot reach" in offline.notes[0]


def test_triage_and_eval_commands(guides, test_data, capsys):
    assert triage_main(["皮肤上起了很多红疹子，特别痒", "--guides", str(guides), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["departments"][0]["department"] == "皮肤科" and len(out["departments"]) == 3
    assert triage_main(["头痛", "--guides", str(guides.parent / "missing.json")]) == 1
    assert "not found" in capsys.readouterr().err
    assert eval_main(["--task", "triage", "--guides", str(guides), "--limit", "20",
                      "--data", str(test_data / DATA[1])]) == 0
    assert "top-1" in capsys.readouterr().out
    assert eval_main(["--task", "triage"]) == 2  # usage error: one line naming what is missing
    assert "--data FILES and --guides PATH" in capsys.readouterr().err
