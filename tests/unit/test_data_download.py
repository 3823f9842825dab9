"""`caregpt data download` against a real local HTTP server: full download + conversion + dataset_info entry, a
resume after a cut connection, a sha256 mismatch refused, unpinned hashes reported; the built-in registry."""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from caregpt.data.download_cli import load_registry, main
from caregpt.data.fetch import fetch
from caregpt.data.formats import normalize
from caregpt.data.public_convert import convert
from caregpt.data.registry import resolve_datasets, sha1_of

# Toyhom layout (department, title, ask, answer), GB18030 like the published files; rows written for this test.
ROWS = [
    ("心血管科", "血压高头晕怎么办", "我六十岁，最近早上起来头晕，量血压160/100，需要马上吃药吗？", "建议先复测血压并尽快到心内科就诊，遵医嘱用降压药，少盐饮食。"),
    ("消化科", "吃完饭胃胀", "这两周每次吃完饭就胃胀打嗝，没有吐，需要做胃镜吗？", "可先规律饮食、少吃油腻，如持续两周以上或有黑便消瘦，建议做胃镜。"),
    ("内分泌科", "空腹血糖7.2", "体检空腹血糖7.2，以前没查过，算糖尿病吗？", "一次结果不能确诊，建议复查空腹血糖和糖化血红蛋白，并查餐后两小时血糖。"),
    ("呼吸科", "咳嗽两周", "咳嗽两周了，晚上更厉害，没有发烧。", ""),  # no answer: invalid, must be counted and reported
] * 5


def toyhom_csv() -> bytes:
    lines = ["department,title,ask,answer"] + [",".join(row) for row in ROWS]
    return ("\r\n".join(lines) + "\r\n").encode("gb18030")


class FileServer:
    """Serves named byte strings with HTTP Range support; can cut the first full response half-way, or ignore ranges."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests, self.cut_next, self.ignore_range = files, [], False, False
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                owner.requests.append((path, self.headers.get("Range")))
                body = owner.files.get(path)
                if body is None:
                    self.send_error(404)
                    return
                start, status = 0, 200
                spec = self.headers.get("Range")
                if spec and not owner.ignore_range:
                    start = int(spec.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    status = 206
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if owner.cut_next:
                    owner.cut_next = False
                    self.wfile.write(body[start:start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True  # the client was promised more: it sees a cut connection
                    return
                self.wfile.write(body[start:])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{urllib.parse.quote(path)}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def write_registry(path: Path, url: str, sha256: str | None) -> Path:
    entry = {"description": "test dialogues", "kind": "sft", "licence": "MIT", "source": "test", "convert": "toyhom_csv",
             "files": [{"url": url, "sha256": sha256, "size": "tiny"}]}
    path.write_text(json.dumps({"toyhom_demo": entry}, ensure_ascii=False), encoding="utf-8")  # JSON is YAML
    return path


@pytest.fixture
def served():
    body = toyhom_csv()
    with FileServer({"/Data_数据/IM_内科/内科.csv": body}) as server:
        yield server, body


def test_download_converts_and_registers_next_to_existing_entries(tmp_path, served, capsys):
    server, body = served
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "dataset_info.json").write_text(json.dumps({"mine": {"file_name": "mine.jsonl"}}), encoding="utf-8")
    registry = write_registry(tmp_path / "reg.yaml", server.url("/Data_数据/IM_内科/内科.csv"), hashlib.sha256(body).hexdigest())

    code = main(["toyhom_demo", "--dir", str(data_dir), "--registry", str(registry), "--allow-invalid"])
    out = capsys.readouterr().out

    assert code == 0
    assert (data_dir / "raw" / "toyhom_demo" / "内科.csv").read_bytes() == body
    assert "sha256 verified" in out
    assert "15 records" in out and "5 invalid" in out and "内科.csv:5: missing or empty field(s) ['answer']" in out
    info = json.loads((data_dir / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["mine"] == {"file_name": "mine.jsonl"}  # merged, not overwritten
    entry = info["toyhom_demo"]
    assert entry["file_name"] == "toyhom_demo.jsonl" and entry["file_sha1"] == sha1_of(data_dir / "toyhom_demo.jsonl")
    # the platform reads the converted file through the written entry, as training will
    (attr,) = resolve_datasets(["toyhom_demo"], data_dir)
    lines = (data_dir / "toyhom_demo.jsonl").read_text(encoding="utf-8").splitlines()
    records = [normalize(json.loads(line), f"x:{i}", attr, "sft") for i, line in enumerate(lines)]
    assert len(records) == 15 and not any(r.error for r in records)
    assert records[0].roles == ("user", "assistant")
    assert records[0].contents[0] == f"{ROWS[0][1]}\n{ROWS[0][2]}" and records[0].contents[1] == ROWS[0][3]
    assert json.loads(lines[0])["department"] == "心血管科"
    source = json.loads((data_dir / "raw" / "toyhom_demo" / "SOURCE.json").read_text(encoding="utf-8"))
    assert source["files"][0]["pinned"] is True and source["converted"] == {"file": "toyhom_demo.jsonl", "records": 15, "invalid": 5}


def test_invalid_records_fail_the_run_unless_allowed(tmp_path, served):
    server, body = served
    registry = write_registry(tmp_path / "reg.yaml", server.url("/Data_数据/IM_内科/内科.csv"), None)
    assert main(["toyhom_demo", "--dir", str(tmp_path / "d"), "--registry", str(registry)]) == 1
    assert (tmp_path / "d" / "toyhom_demo.jsonl").is_file()  # the valid records are still written


def test_resume_after_a_cut_connection(tmp_path, served, capsys):
    server, body = served
    server.cut_next = True
    registry = write_registry(tmp_path / "reg.yaml", server.url("/Data_数据/IM_内科/内科.csv"), hashlib.sha256(body).hexdigest())

    code = main(["toyhom_demo", "--dir", str(tmp_path / "d"), "--registry", str(registry), "--allow-invalid"])

    assert code == 0, capsys.readouterr().err
    half = len(body) // 2
    assert [r for _, r in server.requests] == [None, f"bytes={half}-"]  # the second request asked only for the rest
    assert (tmp_path / "d" / "raw" / "toyhom_demo" / "内科.csv").read_bytes() == body
    assert not (tmp_path / "d" / "raw" / "toyhom_demo" / "内科.csv.part").exists()


def test_a_run_out_of_retries_keeps_the_part_and_the_next_run_resumes(tmp_path, served, capsys):
    server, body = served
    server.cut_next = True
    registry = write_registry(tmp_path / "reg.yaml", server.url("/Data_数据/IM_内科/内科.csv"), hashlib.sha256(body).hexdigest())
    args = ["toyhom_demo", "--dir", str(tmp_path / "d"), "--registry", str(registry), "--allow-invalid"]

    assert main([*args, "--retries", "0"]) == 1
    part = tmp_path / "d" / "raw" / "toyhom_demo" / "内科.csv.part"
    assert "run the same command again to resume" in capsys.readouterr().err
    assert part.read_bytes() == body[: len(body) // 2]

    assert main(args) == 0
    assert f"resumed from byte {len(body) // 2}" in capsys.readouterr().out
    assert server.requests[-1][1] == f"bytes={len(body) // 2}-" and not part.exists()


def test_resume_from_a_part_file_left_by_an_earlier_run(tmp_path, served):
    server, body = served
    dest = tmp_path / "f.csv"
    dest.with_name("f.csv.part").write_bytes(body[:100])
    result = fetch(server.url("/Data_数据/IM_内科/内科.csv"), dest, sha256=hashlib.sha256(body).hexdigest(), stream=_Sink())
    assert result.resumed_from == 100 and server.requests[-1][1] == "bytes=100-"
    assert dest.read_bytes() == body


def test_a_server_ignoring_ranges_restarts_the_part_file(tmp_path, served):
    server, body = served
    server.ignore_range = True
    dest = tmp_path / "f.csv"
    dest.with_name("f.csv.part").write_bytes(b"stale bytes from another version")
    result = fetch(server.url("/Data_数据/IM_内科/内科.csv"), dest, stream=_Sink())
    assert dest.read_bytes() == body and result.sha256 == hashlib.sha256(body).hexdigest()


def test_sha256_mismatch_is_refused_and_nothing_is_kept(tmp_path, served, capsys):
    server, _ = served
    registry = write_registry(tmp_path / "reg.yaml", server.url("/Data_数据/IM_内科/内科.csv"), "0" * 64)

    code = main(["toyhom_demo", "--dir", str(tmp_path / "d"), "--registry", str(registry)])

    err = capsys.readouterr().err
    assert code == 1
    assert "sha256 mismatch: expected " + "0" * 64 in err and "was removed" in err
    raw = tmp_path / "d" / "raw" / "toyhom_demo"
    assert not any(raw.iterdir()) if raw.exists() else True
    assert not (tmp_path / "d" / "toyhom_demo.jsonl").exists() and not (tmp_path / "d" / "dataset_info.json").exists()


def test_unpinned_hash_is_printed_for_the_user_to_pin(tmp_path, served, capsys):
    server, body = served
    registry = write_registry(tmp_path / "reg.yaml", server.url("/Data_数据/IM_内科/内科.csv"), None)
    main(["toyhom_demo", "--dir", str(tmp_path / "d"), "--registry", str(registry), "--allow-invalid"])
    out = capsys.readouterr().out
    assert f"sha256 {hashlib.sha256(body).hexdigest()} (内科.csv) is NOT pinned" in out
    assert f"--sha256 {hashlib.sha256(body).hexdigest()}" in out


def test_registry_names_and_urls_cannot_escape_the_data_dir(tmp_path, capsys):
    for name, url in (("../evil", "http://127.0.0.1:1/a.csv"), ("ok", "http://127.0.0.1:1/a/..")):
        registry = tmp_path / "reg.yaml"
        registry.write_text(json.dumps({name: {"kind": "sft", "licence": "x", "convert": "toyhom_csv", "files": [{"url": url}]}}))
        assert main([name, "--dir", str(tmp_path / "d"), "--registry", str(registry)]) == 2
        assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_a_file_in_another_layout_registers_nothing(tmp_path, capsys):
    with FileServer({"/other.csv": "a,b\n1,2\n".encode()}) as server:
        registry = write_registry(tmp_path / "reg.yaml", server.url("/other.csv"), None)
        assert main(["toyhom_demo", "--dir", str(tmp_path / "d"), "--registry", str(registry)]) == 1
    assert "no record could be converted" in capsys.readouterr().err
    assert not (tmp_path / "d" / "dataset_info.json").exists()


def test_missing_file_is_a_clear_http_error(tmp_path, served, capsys):
    server, _ = served
    registry = write_registry(tmp_path / "reg.yaml", server.url("/nope.csv"), None)
    assert main(["toyhom_demo", "--dir", str(tmp_path / "d"), "--registry", str(registry)]) == 1
    assert "HTTP 404" in capsys.readouterr().err


def test_builtin_registry_lists_every_dataset_with_its_licence(capsys):
    registry = load_registry(None)
    for name in ("toyhom_im", "toyhom_surgical", "cmtmedqa", "cmexam_test", "cmb_exam_val", "cmb_clin", "medicalgpt_pretrain",
                 "medicalgpt_sft", "medicalgpt_reward", "huatuo_med_dialog_100", "caregpt_hospital_guide"):
        assert name in registry
    assert sum(name.startswith("toyhom_") for name in registry) == 6
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "toyhom_im" in out and "MIT" in out and "Apache-2.0" in out and "not pinned" in out
    assert main(["toyhom_imm"]) == 2 and "did you mean 'toyhom_im'" in capsys.readouterr().err
    assert main(["toyhom_im", "--sha256", "xyz"]) == 2 and "64 hex digits" in capsys.readouterr().err


def test_exam_and_preference_converters_produce_what_eval_and_training_read(tmp_path):
    cmb = tmp_path / "cmb.json"
    cmb.write_text(json.dumps([{"exam_subject": "内科学", "question": "高血压的诊断标准是", "answer": "B",
                                "option": {"A": "120/80", "B": "140/90", "C": "160/100", "D": "180/110", "E": ""}}],
                              ensure_ascii=False), encoding="utf-8")
    result = convert("cmb_demo", "cmb_exam_json", "choice", [cmb], tmp_path)
    record = json.loads(result.path.read_text(encoding="utf-8"))
    assert result.written == 1 and result.entry is None  # exams are not training data: no dataset_info entry
    assert record["options"] == {"A": "120/80", "B": "140/90", "C": "160/100", "D": "180/110"} and record["subject"] == "内科学"

    cmexam = tmp_path / "cmexam.csv"
    cmexam.write_text("Question,Options,Answer,Medical Discipline\n"
                      "\"缺铁性贫血首选\",\"A 口服铁剂\nB 输血\nC 维生素B12\",A,内科学\n"
                      "\"无选项的题\",\"没有字母\",A,内科学\n", encoding="utf-8")
    result = convert("cmexam_demo", "cmexam_csv", "choice", [cmexam], tmp_path)
    assert (result.written, result.invalid) == (1, 1) and "no lettered options" in result.examples[0]

    reward = tmp_path / "reward.json"
    reward.write_text(json.dumps({"question": "感冒要吃抗生素吗", "response_chosen": "病毒性感冒不需要抗生素。",
                                  "response_rejected": "要，马上吃。"}, ensure_ascii=False) + "\n", encoding="utf-8")
    result = convert("reward_demo", "medicalgpt_reward", "pref", [reward], tmp_path)
    assert result.entry["ranking"] is True and json.loads(result.path.read_text(encoding="utf-8"))["output"][0] == "病毒性感冒不需要抗生素。"


class _Sink:
    """A non-terminal stream for progress lines."""

    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def test_the_caregpt_cli_dispatches_data_download(capsys):
    from caregpt.cli import main as caregpt_main

    assert caregpt_main(["data", "download", "--list"]) == 0
    assert "cmb_exam_val" in capsys.readouterr().out
    caregpt_main(["data"])
    assert "download" in capsys.readouterr().out


# one record in each source layout (the layouts the sources publish; texts written for this test)
SOURCE_RECORDS = {
    "cmtmedqa_json": ("sft", {"id": "j1", "cate1": "内科", "cate2": "心血管内科", "instruction": "那我需要复查吗？", "input": "",
                              "output": "建议一个月后复查心电图。", "history": [["我最近心慌。", "心慌持续多久了？"]]}),
    "jsonl_alpaca": ("sft", {"instruction": "发烧怎么办", "input": "三十八度五", "output": "多喝水，必要时服退烧药，持续不退请就医。"}),
    "query_response": ("sft", {"query": "孩子咳嗽一周了", "response": "建议带孩子到儿科就诊，听诊肺部。"}),
    "huatuo_med_dialog": ("sft", {"id": 1, "medical_case": "疾病：\n湿疹\n病情描述：\n手上起小泡。", "doctor_diagnosis": "汗疱疹，外用药膏。",
                                  "Department": "皮肤科"}),
    "huatuo_sft_v1": ("sft", {"data": ["问：头痛怎么办？", "答：先休息，持续请就医。", "问：要吃药吗？", "答：可以短期服用止痛药。"]}),
    "cmb_clin_json": ("sft", {"id": 1, "title": "病例", "description": "男，50岁，胸痛2小时。",
                              "QA_pairs": [{"question": "初步诊断？", "solution": "急性冠脉综合征可能。"},
                                           {"question": "下一步？", "solution": "立即心电图和肌钙蛋白。"}]}),
    "jsonl_text": ("text", {"text": "发热是指体温升高超过正常范围。"}),
    "huatuo_kuake_qic": ("prompts", {"id": "s1", "label": "治疗方案", "query": "糖尿病的治疗"}),
}


@pytest.mark.parametrize("converter", sorted(SOURCE_RECORDS))
def test_each_converter_produces_records_the_platform_accepts(tmp_path, converter):
    kind, record = SOURCE_RECORDS[converter]
    source = tmp_path / "source.json"
    source.write_text(json.dumps(record, ensure_ascii=False) + "\n" + json.dumps({"unrelated": 1}) + "\n", encoding="utf-8")
    result = convert("demo", converter, kind, [source], tmp_path)
    assert (result.written, result.invalid) == (1, 1) and result.examples[0].startswith("source.json:2: ")
    if result.entry is not None:  # training data: read back through the written entry, as training does
        (tmp_path / "dataset_info.json").write_text(json.dumps({"demo": result.entry}), encoding="utf-8")
        (attr,) = resolve_datasets(["demo"], tmp_path)
        converted = json.loads(result.path.read_text(encoding="utf-8"))
        assert normalize(converted, "x:1", attr, kind if kind == "text" else "sft").error == ""
