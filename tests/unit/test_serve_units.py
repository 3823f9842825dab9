"""The serving pieces that need no Ray: OpenAI validation, sampling, streamed text, adapter names, settings.

Run: .venv/bin/pytest tests/unit/test_serve_units.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from caregpt.config.loader import ConfigError
from caregpt.serve.catalog import Catalog
from caregpt.serve.config import ServeConfig, build_serve_config, load_serve_config
from caregpt.serve.errors import APIError
from caregpt.serve.protocol import ChatCompletionRequest, normalize_messages
from caregpt.serve.sampling import RowSampler, SamplingParams, argmax_tokens, perturb_scores
from caregpt.serve.textstream import IncrementalText


def msgs(*pairs):
    return ChatCompletionRequest.model_validate({"messages": [{"role": r, "content": c} for r, c in pairs]}).messages


# ---- protocol -------------------------------------------------------------------------------------
def test_messages_are_normalised_for_templates():
    out = normalize_messages(msgs(("developer", "a"), ("system", "b"), ("user", "q1"), ("user", "q2"), ("assistant", "x"), ("user", "q3")))
    assert out == [
        {"role": "system", "content": "a\n\nb"},
        {"role": "user", "content": "q1\n\nq2"},
        {"role": "assistant", "content": "x"},
        {"role": "user", "content": "q3"},
    ]


@pytest.mark.parametrize("pairs", [[("assistant", "x")], [("user", "q"), ("assistant", "a")], [("user", "q"), ("system", "s"), ("user", "q")], [("system", "s")]])
def test_conversation_shapes_a_template_cannot_answer_are_refused(pairs):
    with pytest.raises(APIError) as err:
        normalize_messages(msgs(*pairs))
    assert err.value.status == 400 and err.value.param.startswith("messages")


def test_text_parts_are_joined_and_zero_values_mean_defaults():
    req = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}], "max_new_tokens": 0, "temperature": 0, "top_p": 0}
    )
    assert normalize_messages(req.messages)[0]["content"] == "ab"
    assert req.requested_max_tokens() is None  # max_new_tokens 0 = the server default (api_demo)
    both = {"messages": [{"role": "user", "content": "q"}], "max_completion_tokens": 5, "max_tokens": 9}
    assert ChatCompletionRequest.model_validate(both).requested_max_tokens() == 5  # OpenAI's newer name wins


# ---- sampling -------------------------------------------------------------------------------------
def test_greedy_rows_are_untouched_and_seeds_reproduce_per_row():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    greedy = RowSampler(SamplingParams(max_tokens=1, temperature=0))
    assert torch.equal(perturb_scores(logits, [greedy, None, greedy]), logits)

    def draws(seed, rows_before):
        sampler = RowSampler(SamplingParams(max_tokens=1, temperature=1.0, seed=seed))
        others = [RowSampler(SamplingParams(max_tokens=1, temperature=0.7)) for _ in range(rows_before)]
        return [argmax_tokens(logits[:1].repeat(rows_before + 1, 1), others + [sampler])[-1].item() for _ in range(20)]

    assert draws(5, 0) == draws(5, 2)  # a seeded row draws the same tokens whatever shares its batch
    assert draws(5, 0) != draws(6, 0)


def test_sampled_frequencies_follow_softmax_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    sampler = RowSampler(SamplingParams(max_tokens=1, temperature=1.0, seed=1))
    counts = torch.bincount(torch.stack([argmax_tokens(logits, [sampler]) for _ in range(4000)]).flatten(), minlength=4) / 4000
    assert torch.allclose(counts, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03)
    nucleus = RowSampler(SamplingParams(max_tokens=1, temperature=1.0, top_p=0.7, seed=1))
    picked = {argmax_tokens(logits, [nucleus]).item() for _ in range(500)}
    assert picked == {0, 1}  # 0.5 + 0.3 reaches 0.7: the tail is cut


# ---- streamed text --------------------------------------------------------------------------------
class ByteTokenizer:
    """Each token is one UTF-8 byte: multi-byte characters arrive split, as with byte-level BPE."""

    def decode(self, ids, **_):
        return bytes(ids).decode("utf-8", errors="replace")


def feed_all(stream: IncrementalText, text: str) -> str:
    out = "".join(stream.feed([b]) for b in text.encode())
    return out + stream.flush()


def test_split_characters_are_never_sent_half():
    stream = IncrementalText(ByteTokenizer())
    pieces = [stream.feed([b]) for b in "发烧了".encode()]
    assert "".join(pieces) == "发烧了" and all("\ufffd" not in p for p in pieces)


def test_stop_strings_cut_the_answer_even_across_tokens():
    stream = IncrementalText(ByteTokenizer(), ("Human:",))
    assert feed_all(stream, "先休息。\nHuman: more") == "先休息。\n" and stream.stopped
    held = IncrementalText(ByteTokenizer(), ("END",))
    assert feed_all(held, "ab EN done") == "ab EN done" and not held.stopped  # a held-back prefix is released


# ---- adapter names --------------------------------------------------------------------------------
@pytest.fixture()
def adapter_root(tmp_path: Path) -> Path:
    root = tmp_path / "adapters"
    (root / "cardio").mkdir(parents=True)
    (root / "cardio" / "adapter_config.json").write_text("{}")
    (root / "plain").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "adapter_config.json").write_text("{}")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (tmp_path / "model").mkdir()
    return root


def catalog(root: Path, **extra) -> Catalog:
    return Catalog(ServeConfig(model_name_or_path=str(root.parent / "model"), adapters_dir=str(root), **extra))


@pytest.mark.parametrize("name,status", [("../cardio", 400), ("cardio/../cardio", 400), ("/etc", 400), ("..", 400), ("a b", 400), ("plain", 404), ("escape", 404), ("missing", 404)])
def test_only_direct_adapter_folders_are_served(adapter_root, name, status):
    with pytest.raises(APIError) as err:
        catalog(adapter_root).resolve(name)
    assert err.value.status == status


def test_adapters_and_base_resolve(adapter_root):
    cat = catalog(adapter_root)
    assert cat.adapters() == ["cardio"] and cat.names() == ["model", "cardio"]
    assert cat.resolve("cardio").adapter == "cardio" and cat.resolve(None).adapter == ""
    assert catalog(adapter_root, accept_any_model=True).resolve("string").adapter == ""  # api_demo compatibility


# ---- settings -------------------------------------------------------------------------------------
def test_settings_from_flags_and_serve_config(tmp_path: Path):
    doc = {"applications": [{"name": "x", "import_path": "serve_apps.chat:build_app", "args": {"model_name_or_path": "m", "port": 9000}}]}
    path = tmp_path / "serve.yaml"
    path.write_text(json.dumps(doc))
    config, serve_doc = load_serve_config([str(path), "--port", "9100", "--api_keys", "a,b"])
    assert config.port == 9100 and config.api_keys == ["a", "b"] and serve_doc["applications"][0]["args"]["port"] == "9100"
    with pytest.raises(ConfigError, match="did you mean 'max_batch_size'"):
        build_serve_config({"model_name_or_path": "m", "max_batchsize": 4})
    with pytest.raises(ConfigError, match="min_replicas"):
        build_serve_config({"model_name_or_path": "m", "min_replicas": 3, "max_replicas": 2})


def test_api_keys_come_from_the_environment_too(monkeypatch, tmp_path: Path):
    keys = tmp_path / "keys"
    keys.write_text("# ops keys\nk-file\n")
    monkeypatch.setenv("CAREGPT_API_KEYS", "k-env1, k-env2")
    config = ServeConfig(model_name_or_path="m", api_keys=["k-config"], api_keys_file=str(keys))
    assert config.accepted_keys() == ["k-config", "k-file", "k-env1", "k-env2"]


def test_app_options_follow_settings():
    from caregpt.serve.app import model_deployment_options

    auto = model_deployment_options(ServeConfig(model_name_or_path="m", min_replicas=1, max_replicas=4, max_queued_requests=10))
    assert auto["autoscaling_config"]["max_replicas"] == 4 and auto["max_queued_requests"] == 10 and "num_replicas" not in auto
    fixed = model_deployment_options(ServeConfig(model_name_or_path="m", num_replicas=2))
    assert fixed["num_replicas"] == 2 and "autoscaling_config" not in fixed


def test_shipped_serve_configs_are_valid():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from caregpt.serve.app import DEPLOYMENT_NAMES

    configs = sorted((Path(__file__).resolve().parents[2] / "serve_apps" / "configs").glob("*.yaml"))
    assert len(configs) >= 2
    for path in configs:
        text = path.read_text(encoding="utf-8")
        assert text.startswith("#") and ("serve run" in text.split("\n\n")[0] or "serve deploy" in text.split("\n\n")[0]), path.name
        doc = yaml.safe_load(text)
        ServeDeploySchema.model_validate(doc)  # what `serve run` / `serve deploy` / RayService check
        (app,) = doc["applications"]
        assert app["import_path"] == "serve_apps.chat:build_app"
        build_serve_config(app["args"], path.name)
        assert {d["name"] for d in app["deployments"]} <= set(DEPLOYMENT_NAMES)
        assert any("autoscaling_config" in d for d in app["deployments"])
