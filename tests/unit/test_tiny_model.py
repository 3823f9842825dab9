"""Tests for the scratch tokenizer and the tiny Llama model builder (no Ray)."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from caregpt.models.tiny import PRESETS, build_tiny_model, count_parameters, main, preset_config
from caregpt.models.tokenizer_train import SPECIAL_TOKENS, iter_corpus_text, train_tokenizer
from tests.conftest import TEST_DATA

FEVER = TEST_DATA / "pretrain_medicalgpt_fever.txt"
TOYHOM = TEST_DATA / "sft_toyhom_im_department.jsonl"
MULTITURN = TEST_DATA / "sft_cmtmedqa_multiturn.jsonl"

# Expected parameter ranges per preset (millions).
EXPECTED_PARAMS = {"tiny": (0.5e6, 3e6), "small": (10e6, 20e6), "bench34m": (32e6, 36e6)}


@pytest.fixture(scope="module")
def tiny_dir(tiny_model) -> Path:
    """The session's tiny model (conftest): built by build_tiny_model on the fever text + the Toyhom records."""
    return Path(tiny_model)


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def model(tiny_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dir)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- corpus reading


def test_iter_corpus_text_reads_all_formats(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("第一行 文本\n\n   \nsecond line\n", encoding="utf-8")
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text(
        json.dumps({"instruction": "问", "input": "", "output": ["好", "坏"], "history": [["u1", "a1"]], "n": 3})
        + "\n\n"
        + json.dumps({"nested": {"deep": {"x": "深"}}, "flag": True})
        + "\n",
        encoding="utf-8",
    )
    js = tmp_path / "c.json"
    js.write_text(json.dumps([{"content": "科室介绍"}, {"content": "内科", "id": 7}], ensure_ascii=False), encoding="utf-8")
    js_lines = tmp_path / "d.json"  # a ".json" file that is really JSON lines
    js_lines.write_text('{"q": "甲"}\n{"q": "乙"}\n', encoding="utf-8")
    csv_file = tmp_path / "e.csv"
    csv_file.write_text('department,ask\n内科,"头痛, 发烧"\n,空\n', encoding="utf-8")

    got = list(iter_corpus_text([txt, jsonl, js, js_lines, str(csv_file)]))
    assert got == [
        "第一行 文本",
        "second line",
        "问",
        "好",
        "坏",
        "u1",
        "a1",
        "深",
        "科室介绍",
        "内科",
        "甲",
        "乙",
        "department",
        "ask",
        "内科",
        "头痛, 发烧",
        "空",
    ]


def test_iter_corpus_text_includes_history_of_real_multiturn_records():
    first = json.loads(MULTITURN.read_text(encoding="utf-8").splitlines()[0])
    assert first["history"], "expected the first CMtMedQA record to have earlier turns"
    n_strings = sum(1 for _ in _strings(first))
    got = list(itertools.islice(iter_corpus_text([MULTITURN]), n_strings))
    assert first["history"][0][0] in got and first["history"][0][1] in got
    assert first["output"] in got


def _strings(value):
    if isinstance(value, str):
        if value.strip():
            yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_iter_corpus_text_errors_name_the_file(tmp_path):
    bad_suffix = tmp_path / "corpus.parquet"
    bad_suffix.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"corpus\.parquet.*\.txt"):
        list(iter_corpus_text([bad_suffix]))
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        list(iter_corpus_text([missing]))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"a": "ok"}\n{not json\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.jsonl: line 2"):
        list(iter_corpus_text([broken]))
    gbk = tmp_path / "gbk.txt"
    gbk.write_bytes("内科医生".encode("gb18030"))
    with pytest.raises(ValueError, match=r"gbk\.txt.*UTF-8"):
        list(iter_corpus_text([gbk]))
    # train_tokenizer checks every file before training
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        train_tokenizer([FEVER, missing], 300)


# ----------------------------------------------------------------------------- tokenizer

ROUND_TRIP_TEXTS = [
    "患者男性，45岁，反复发热3天，体温最高39.5℃，伴咳嗽、咳痰。",
    "Hello , world . It's  a   test!\n\tNew line, tabs\tand trailing spaces   ",
    "  leading spaces: 高血压(hypertension) 患者可以吃党参吗？ BP 150/95 mmHg",
    "emoji 😷💊 and rare 龘 character; mixed 中English文",
    "<|im_start|> looks special but is just text here? no: it IS a special token",
]


def test_tokenizer_round_trips_chinese_and_english(tokenizer):
    fever_lines = [line for line in FEVER.read_text(encoding="utf-8").splitlines() if line.strip()][:50]
    for text in ROUND_TRIP_TEXTS + fever_lines:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids) == text
    # byte-level: no unknown token exists, and nothing is added around plain text
    assert tokenizer.unk_token is None
    assert tokenizer("发热")["input_ids"][0] != tokenizer.bos_token_id


def test_chinese_text_compresses(tokenizer):
    text = FEVER.read_text(encoding="utf-8")
    n_tokens = len(tokenizer(text)["input_ids"])
    n_bytes = len(text.encode("utf-8"))
    n_chars = len(text)
    assert n_tokens < n_bytes
    # a useful Chinese BPE also beats one token per character (about 0.8 tokens/char here)
    assert n_tokens < n_chars, (n_tokens, n_chars)


def test_special_tokens_are_single_ids(tokenizer):
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        ids = tokenizer(token)["input_ids"]
        assert ids == [expected_id], (token, ids)
        assert token in tokenizer.all_special_tokens
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<s>", "<|im_end|>", "<pad>")
    ids = tokenizer("<|im_start|>user\n头痛<|im_end|>")["input_ids"]
    assert ids[0] == 3 and ids[-1] == 4
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\n头痛"


def test_chat_template_renders_chatml(tokenizer):
    messages = [
        {"role": "system", "content": "你是一名医生。"},
        {"role": "user", "content": "发烧怎么办？"},
        {"role": "assistant", "content": "多喝水，注意休息。"},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == (
        "<|im_start|>system\n你是一名医生。<|im_end|>\n"
        "<|im_start|>user\n发烧怎么办？<|im_end|>\n"
        "<|im_start|>assistant\n多喝水，注意休息。<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\n发烧怎么办？<|im_end|>\n<|im_start|>assistant\n")
    assert not tokenizer.apply_chat_template(messages[:2], tokenize=False).endswith("assistant\n")
    # OpenAI-style content parts render as their text
    parts = [{"role": "user", "content": [{"type": "text", "text": "头"}, {"type": "text", "text": "痛"}]}]
    assert tokenizer.apply_chat_template(parts, tokenize=False) == "<|im_start|>user\n头痛<|im_end|>\n"
    # {% generation %} blocks: the assistant mask covers the reply and its <|im_end|>
    enc = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert tokenizer.decode(masked) == "多喝水，注意休息。<|im_end|>"


# ----------------------------------------------------------------------------- model directory


def test_model_dir_loads_by_path(tiny_dir, tokenizer, model):
    from transformers import LlamaForCausalLM

    names = {p.name for p in tiny_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "caregpt_model.json"} <= names
    assert not [n for n in names if n.endswith(".bin")]
    assert not [p for p in tiny_dir.parent.iterdir() if p.name.startswith(".")], "staging dir left behind"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(tiny_dir.stat().st_mode) == 0o777 & ~umask, "model dir should be readable like a mkdir'd one"

    assert isinstance(model, LlamaForCausalLM)
    assert model.config._attn_implementation == "sdpa"
    n_params = model.num_parameters()
    low, high = EXPECTED_PARAMS["tiny"]
    assert low <= n_params <= high
    assert n_params == count_parameters("tiny", vocab_size=len(tokenizer))
    assert model.config.vocab_size == len(tokenizer) == 4096
    assert model.config.tie_word_embeddings is True
    assert model.config.bos_token_id == tokenizer.bos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.generation_config.eos_token_id == [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("</s>")]
    assert tokenizer.model_max_length == model.config.max_position_embeddings == 1024

    manifest = json.loads((tiny_dir / "caregpt_model.json").read_text(encoding="utf-8"))
    assert manifest["preset"] == "tiny"
    assert manifest["num_parameters"] == n_params
    assert manifest["corpus"] == [FEVER.name, TOYHOM.name]
    assert manifest["vocab_size"] == 4096 and manifest["seed"] == 0
    assert manifest["created_with"]["caregpt"]


def test_generate_produces_new_tokens(tokenizer, model):
    messages = [{"role": "user", "content": "发烧三天了怎么办？"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    prompt_len = inputs["input_ids"].shape[1]
    assert out.shape[1] == prompt_len + 8
    assert torch.equal(out[0, :prompt_len], inputs["input_ids"][0])
    assert isinstance(tokenizer.decode(out[0, prompt_len:]), str)


def test_same_seed_same_weights_different_seed_different(tmp_path):
    rng_before = torch.get_rng_state()
    a = build_tiny_model("tiny", [FEVER], tmp_path / "a", seed=0)
    b = build_tiny_model("tiny", [FEVER], tmp_path / "b", seed=0)
    c = build_tiny_model("tiny", [FEVER], tmp_path / "c", seed=1)
    assert torch.equal(torch.get_rng_state(), rng_before), "build must not touch the global torch RNG"

    wa, wb, wc = (load_file(str(d / "model.safetensors")) for d in (a, b, c))
    assert wa.keys() == wb.keys() == wc.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    differing = [k for k in wa if not torch.equal(wa[k], wc[k])]
    assert "model.embed_tokens.weight" in differing
    assert _sha(a / "tokenizer.json") == _sha(b / "tokenizer.json") == _sha(c / "tokenizer.json")


def test_vocab_size_override_and_logging(tmp_path, caplog):
    from transformers import AutoConfig, AutoTokenizer

    with caplog.at_level(logging.INFO, logger="caregpt.models.tiny"):
        out = build_tiny_model("tiny", [FEVER], tmp_path / "v1k", vocab_size=1024, seed=3)
    assert len(AutoTokenizer.from_pretrained(out)) == 1024
    assert AutoConfig.from_pretrained(out).vocab_size == 1024
    records = [r for r in caplog.records if r.name == "caregpt.models.tiny"]
    assert records and "parameters" in records[-1].getMessage() and "vocab 1024" in records[-1].getMessage()


def test_refuses_to_overwrite_non_empty_dir(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("precious", encoding="utf-8")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        build_tiny_model("tiny", [FEVER], out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    build_tiny_model("tiny", [FEVER], out, overwrite=True)
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" in names and "keep.txt" not in names

    empty = tmp_path / "empty"
    empty.mkdir()
    assert build_tiny_model("tiny", [FEVER], empty) == empty.absolute()

    # overwrite=True never deletes a directory holding the corpus
    corpus_dir = tmp_path / "corpus_home"
    corpus_dir.mkdir()
    corpus = corpus_dir / "notes.txt"
    corpus.write_text("发热待查\n", encoding="utf-8")
    with pytest.raises(ValueError, match="contains corpus file"):
        build_tiny_model("tiny", [corpus], corpus_dir, overwrite=True)
    assert corpus.is_file()


def test_unknown_preset_lists_presets(tmp_path):
    with pytest.raises(ValueError) as excinfo:
        build_tiny_model("huge", [FEVER], tmp_path / "x")
    message = str(excinfo.value)
    assert "huge" in message and all(name in message for name in PRESETS)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="tiny"):
        count_parameters("huge")


def test_cli_main_builds(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["--preset", "tiny", "--corpus", str(FEVER), "--output", str(out), "--seed", "5"]) == 0
    assert capsys.readouterr().out.strip() == str(out.absolute())
    assert json.loads((out / "caregpt_model.json").read_text(encoding="utf-8"))["seed"] == 5


# ----------------------------------------------------------------------------- presets


def _expected_llama_params(cfg) -> int:
    h, v, n, i = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers, cfg.intermediate_size
    head_dim = h // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * head_dim
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * i + 2 * h  # q,o + k,v + mlp + 2 norms
    embeddings = v * h * (1 if cfg.tie_word_embeddings else 2)
    return n * per_layer + embeddings + h  # + final norm


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_parameter_counts(preset):
    counted = count_parameters(preset)  # meta device: bench34m allocates nothing
    assert counted == _expected_llama_params(preset_config(preset))
    low, high = EXPECTED_PARAMS[preset]
    assert low <= counted <= high, f"{preset}: {counted:,}"


def test_bench34m_config_matches_spec():
    cfg = preset_config("bench34m")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (512, 8, 8, 1408)
    assert (cfg.vocab_size, cfg.max_position_embeddings) == (8192, 2048)


def test_train_tokenizer_saves_and_small_corpus(tmp_path):
    from transformers import AutoTokenizer

    corpus = tmp_path / "notes.txt"
    corpus.write_text("发热 发热 发热 咳嗽\nfever fever cough\n", encoding="utf-8")
    tok = train_tokenizer([corpus], 4096, tmp_path / "tok", model_max_length=64)
    # a tiny corpus cannot fill the vocabulary: the real size is smaller than requested
    assert 256 + len(SPECIAL_TOKENS) < len(tok) < 4096
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert len(loaded) == len(tok) and loaded.model_max_length == 64
    assert loaded.chat_template == tok.chat_template and "<|im_start|>" in loaded.chat_template
    assert loaded("发热")["input_ids"] == tok("发热")["input_ids"]

    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        train_tokenizer([empty], 512)
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer([corpus], 100)
