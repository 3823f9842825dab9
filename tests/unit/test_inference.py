"""The one inference loader (caregpt.models.inference) and local chat on the serving engine, on the tiny model."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from caregpt.config.loader import ConfigError
from caregpt.models.inference import (
    InferenceSpec,
    cut_at_stops,
    load_for_inference,
    recorded_settings,
    recorded_template,
    resolve_template,
    stop_token_ids,
)
from caregpt.models.tiny import build_tiny_model
from tests.adapter_factory import make_lora_adapter
from tests.conftest import TEST_DATA

FEVER = TEST_DATA / "pretrain_medicalgpt_fever.txt"
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model("tiny", [FEVER], tmp_path_factory.mktemp("inference") / "tiny", seed=0)


def _record(directory: Path, **values) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "caregpt_config.yaml").write_text(yaml.safe_dump(values))
    return directory


def test_template_precedence_named_then_recorded_then_tokenizer_then_default(tmp_path):
    model = _record(tmp_path / "model", template="qwen", model_name_or_path="/elsewhere")
    first = _record(tmp_path / "a1", template="llama3", model_name_or_path=str(model))
    last = _record(tmp_path / "a2", template="chatml", model_name_or_path=str(model))
    bare = tmp_path / "bare"
    bare.mkdir()
    with_jinja, without = SimpleNamespace(chat_template="{{ x }}"), SimpleNamespace(chat_template=None)
    assert resolve_template("mistral", [str(first), str(last)], str(model), without) == "mistral"
    assert resolve_template(None, [str(first), str(last)], str(model), without) == "chatml"  # the last adapter wins
    assert resolve_template(None, [str(first), str(bare)], str(model), without) == "llama3"
    assert resolve_template(None, [], str(model), without) == "qwen"
    assert resolve_template(None, [], str(bare), with_jinja) == "auto"
    assert resolve_template(None, [], str(bare), without) == "default"
    # what predict / export / eval fill in for unset flags: an adapter's base comes with it, a model's does not
    assert recorded_settings([str(first), str(last)]) == {"model_name_or_path": str(model), "template": "chatml"}
    assert recorded_settings([], str(model)) == {"template": "qwen"}
    (bare / "caregpt_config.yaml").write_text(": not yaml : [")
    assert recorded_template(bare, model) == "qwen"  # an unreadable record is no hint, not a crash


def test_stop_ids_and_cut():
    class Tok:
        eos_token_id = 2

        def encode(self, text, add_special_tokens=False):
            return {"<|im_end|>": [7], "\nHuman:": [9, 10, 11]}[text]

    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[3, 2]))
    assert stop_token_ids(Tok(), ("<|im_end|>", "\nHuman:"), model) == ([3, 2, 7], ["\nHuman:"])
    assert cut_at_stops(" 多喝水。\nHuman: 还有呢<|im_end|>", ["<|im_end|>", "\nHuman:"]) == "多喝水。"
    assert cut_at_stops("no stop here ", ["</s>"]) == "no stop here"


def test_adapters_are_merged_in_order_and_the_recorded_template_is_used(tiny, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    one = make_lora_adapter(tiny, tmp_path / "one", seed=1, template="llama3")
    two = make_lora_adapter(tiny, tmp_path / "two", seed=2, template="chatml")
    loaded = load_for_inference(InferenceSpec(str(tiny), (str(one), str(two)), device="cpu"))
    assert loaded.template.name == "chatml" and not loaded.model.training
    assert not any("lora" in name for name, _ in loaded.model.named_modules())  # merged, plain-model speed
    assert loaded.tokenizer.eos_token_id in loaded.stop_ids and loaded.pad_id is not None

    reference = AutoModelForCausalLM.from_pretrained(str(tiny))
    for adapter in (one, two):  # what merging must equal: each adapter applied on top of the previous result
        reference = PeftModel.from_pretrained(reference, str(adapter)).merge_and_unload()
    ids = torch.tensor([loaded.template.encode_prompt(loaded.tokenizer, [{"role": "user", "content": "发烧怎么办"}])])
    with torch.no_grad():
        got, want = loaded.model(ids).logits, reference.eval()(ids).logits
        base = AutoModelForCausalLM.from_pretrained(str(tiny)).eval()(ids).logits
    assert torch.allclose(got, want, atol=1e-4) and not torch.allclose(got, base, atol=1e-2)


def test_refuses_pickled_adapters_and_non_adapters(tiny, tmp_path):
    pickled = tmp_path / "pickled"
    make_lora_adapter(tiny, pickled)
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    with pytest.raises(ConfigError, match="pickled adapter_model.bin, which is refused"):
        load_for_inference(InferenceSpec(str(tiny), (str(pickled),), device="cpu"))
    from caregpt.serve.config import ServeConfig
    from caregpt.serve.loading import preflight

    with pytest.raises(ConfigError, match="pickled adapter_model.bin"):  # `caregpt serve` refuses it on the driver
        preflight(ServeConfig(model_name_or_path=str(tiny), checkpoint_dir=[str(pickled)]))
    with pytest.raises(ConfigError, match="holds a full model"):
        load_for_inference(InferenceSpec(str(tiny), (str(tiny),), device="cpu"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_for_inference(InferenceSpec(str(tmp_path / "missing"), device="cpu"))


@pytest.fixture(scope="module")
def chat(tiny):
    from caregpt.chat.local import LocalChat

    backend = LocalChat(str(tiny), template="chatml", seed=11)
    yield backend
    backend.close()


QUESTION = [{"role": "user", "content": "孩子发烧三天了怎么办？"}]


def _answer(chat, **gen) -> str:
    return "".join(d.text for d in chat.stream(QUESTION, max_tokens=16, **gen))


def test_local_chat_runs_the_serving_engine_greedy_and_seeded(chat):
    from caregpt.serve.hf_engine import TransformersEngine

    assert isinstance(chat.engine, TransformersEngine)  # one generation path with `caregpt serve`
    greedy = _answer(chat, temperature=0)
    assert greedy and greedy == _answer(chat, temperature=0)
    chat._seeds = itertools.count(11)
    first = _answer(chat, temperature=1.0, top_p=1.0)
    chat._seeds = itertools.count(11)
    assert _answer(chat, temperature=1.0, top_p=1.0) == first  # --seed makes a session repeat


def test_closing_a_local_stream_cancels_the_request_in_the_engine(chat):
    stream = chat.stream(QUESTION, temperature=0, max_tokens=400)
    next(stream)
    stream.close()  # what Ctrl-C / the Stop button do
    deadline = time.monotonic() + 10
    while chat.engine.stats() != {"waiting": 0, "running": 0} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert chat.engine.stats() == {"waiting": 0, "running": 0}
    assert _answer(chat, temperature=0)  # and the engine keeps answering


def test_a_quantised_base_keeps_one_adapter_attached_and_the_engine_answers(tiny, tmp_path):
    pytest.importorskip("bitsandbytes")
    from caregpt.chat.local import LocalChat
    from caregpt.models.adapters import is_quantized

    adapter = make_lora_adapter(tiny, tmp_path / "qlora", quantization_bit=4)
    with pytest.raises(ConfigError, match="cannot merge adapter"):
        load_for_inference(InferenceSpec(str(tiny), (str(adapter), str(adapter)), quantization_bit=4, device="cpu"))
    chat = LocalChat(str(tiny), checkpoint_dir=[str(adapter)], extra={"quantization_bit": 4})
    try:
        assert is_quantized(chat.model) and type(chat.model).__name__.startswith("PeftModel")  # merging needs float weights
        assert chat.template.name == "chatml"  # recorded beside the adapter
        assert _answer(chat, temperature=0)
    finally:
        chat.close()


def test_model_weights_are_read_only_by_the_one_loader():
    """`grep from_pretrained platform/caregpt`: weights load in models/loader.py and models/inference.py only."""
    import ast
    import re

    root = Path(__file__).resolve().parents[2] / "platform" / "caregpt"
    weights = re.compile(r"^(AutoModel\w*|PeftModel\w*|\w+For(CausalLM|SequenceClassification))$")  # not tokenizers / configs
    allowed = {root / "models" / "loader.py", root / "models" / "inference.py"}
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            func = node.func if isinstance(node, ast.Call) else None
            if isinstance(func, ast.Attribute) and func.attr == "from_pretrained" and isinstance(func.value, ast.Name):
                if weights.match(func.value.id) and path not in allowed:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {func.value.id}")
    assert found == []
