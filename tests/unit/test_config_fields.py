"""The shared option building blocks: CommaList (one comma-list check for every spec), pick, and the specs
that are made of another spec's fields (eval's model keys, the front proxy's limits)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from caregpt.cli import NewModelArgs
from caregpt.config.fields import CommaList, Spec
from caregpt.config.help import type_name
from caregpt.config.loader import ConfigError, load_verb
from caregpt.config.pick import pick
from caregpt.config.specs import GROUPS, DataArgs, ModelArgs
from caregpt.serve.config import ServeConfig


def _flags(sections: dict, argv: list[str], verb: str = "test") -> dict:
    return load_verb(argv, sections, verb=verb, config_file=False)[0]


# (spec, field, what the field holds) for every comma-list option of the run config, serve and new-model
LIST_OPTIONS = [
    (GROUPS["model"], "checkpoint_dir", ["out/a", "out/b"]),
    (GROUPS["model"], "adapter_name_or_path", ["out/a", "out/b"]),
    (GROUPS["data"], "dataset", ["med_qa", "med_dialog"]),
    (GROUPS["data"], "interleave_probs", [0.25, 0.75]),
    (GROUPS["finetune"], "lora_target", ["q_proj", "v_proj"]),
    (GROUPS["train"], "report_to", ["tensorboard", "wandb"]),
    (ServeConfig, "checkpoint_dir", ["out/a", "out/b"]),
    (ServeConfig, "adapter_name_or_path", ["out/a", "out/b"]),
    (ServeConfig, "api_keys", ["key-1", "key-2"]),
    (ServeConfig, "cors_allow_origins", ["https://a.example", "https://b.example"]),
    (NewModelArgs, "corpus", ["a.txt", "b.jsonl"]),
]
REQUIRED = {ServeConfig: {"model_name_or_path": "m"}, NewModelArgs: {"output_dir": "out"}}


@pytest.mark.parametrize(("spec", "name", "expected"), LIST_OPTIONS, ids=lambda x: getattr(x, "__name__", None) or str(x)[:20])
def test_a_comma_list_flag_and_a_yaml_list_are_the_same_value(spec, name, expected):
    required = REQUIRED.get(spec, {})
    text = ", ".join(map(str, expected)) + ","  # spaces and a trailing comma are forgiven
    from_flag = _flags({"s": spec}, [*(x for k, v in required.items() for x in (f"--{k}", v)), f"--{name}", text])["s"]
    from_yaml = spec(**required, **{name: expected})
    assert getattr(from_flag, name) == getattr(from_yaml, name) == expected
    assert type_name(spec.model_fields[name].annotation).endswith("[,...]")  # --help says it takes a list


def test_a_bad_item_in_a_comma_list_names_the_key_and_what_is_valid():
    with pytest.raises(ConfigError, match=r"interleave_probs.*command line.*valid number"):
        _flags({"data": DataArgs}, ["--interleave_probs", "0.5,half"])
    with pytest.raises(ConfigError, match=r"report_to.*'none', 'tensorboard', 'wandb' or 'mlflow'"):
        _flags({"train": GROUPS["train"]}, ["--report_to", "tensorboard,csv"])
    with pytest.raises(ValidationError, match=r"api_keys\n.*valid list"):  # after the split, the type check still runs
        ServeConfig(model_name_or_path="m", api_keys=5)


def test_the_api_keys_environment_variable_is_split_like_the_option(monkeypatch):
    monkeypatch.setenv("CAREGPT_API_KEYS", " env-1,env-2 ,,")
    config = ServeConfig(model_name_or_path="m", api_keys="cfg-1,env-1")
    assert config.accepted_keys() == ["cfg-1", "env-1", "env-2"]


class Mine(Spec):
    extra: int = 1
    """A field of the picking verb's own."""


def test_pick_keeps_the_comma_split_checks_and_docstrings_of_the_fields():
    Picked = pick(ModelArgs, ("model_name_or_path", "checkpoint_dir"), "Picked", base=Mine)
    assert list(Picked.model_fields) == ["extra", "model_name_or_path", "checkpoint_dir"]
    picked = _flags({"m": Picked}, ["--checkpoint_dir", "a,b", "--extra", "2"])["m"]
    assert picked.checkpoint_dir == ["a", "b"] and picked.extra == 2
    assert Picked().checkpoint_dir is None  # unset stays unset
    assert Picked.model_fields["checkpoint_dir"].description == ModelArgs.model_fields["checkpoint_dir"].description
    assert Picked.model_fields["checkpoint_dir"].json_schema_extra == {"role": "shaping", "path": "in"}


def test_pick_keeps_field_validators_and_lets_a_new_none_default_through():
    Prompt = pick(DataArgs, ("template", "cutoff_len"), "Prompt", template=None, cutoff_len=None)
    assert Prompt().cutoff_len is None and Prompt().template is None
    with pytest.raises(ConfigError, match="cutoff_len.*at least 8 tokens"):
        _flags({"p": Prompt}, ["--cutoff_len", "3"])
    with pytest.raises(KeyError, match="no field"):
        pick(DataArgs, ("cutof_len",), "Typo")


def test_eval_choice_takes_a_checkpoint_dir(tmp_path):
    """`caregpt eval --task choice --checkpoint_dir DIR` (and `a,b`): eval's model keys are the run config's, picked."""
    from caregpt.eval.cli import SECTIONS

    one, two = tmp_path / "sft", tmp_path / "dpo"
    one.mkdir(), two.mkdir()
    parts = _flags(SECTIONS, ["--task", "choice", "--checkpoint_dir", str(one)], verb="eval")
    assert parts["model"].checkpoint_dir == [str(one)]
    parts = _flags(SECTIONS, ["--task", "choice", "--checkpoint_dir", f"{one},{two}"], verb="eval")
    assert parts["model"].checkpoint_dir == [str(one), str(two)]


def test_the_front_proxy_limits_are_the_serve_settings_fields():
    from caregpt.serve.front import FRONT_KEYS, FrontArgs, FrontProxy, options_from_config, parse_args

    for name in FRONT_KEYS:  # one declaration: same default, same help text, same bounds
        assert FrontArgs.model_fields[name].default == ServeConfig.model_fields[name].default
        assert FrontArgs.model_fields[name].description == ServeConfig.model_fields[name].description
        assert FrontArgs.model_fields[name].metadata == ServeConfig.model_fields[name].metadata
    proxy = FrontProxy(("127.0.0.1", 1))
    assert {k: getattr(proxy, k) for k in FRONT_KEYS} == {k: ServeConfig.model_fields[k].default for k in FRONT_KEYS}
    args = parse_args(["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--header-timeout-s", "3", "--max_request_bytes", "4096"])
    assert (args.header_timeout_s, args.max_request_bytes, args.response_timeout_s) == (3.0, 4096, 660.0)
    with pytest.raises(ConfigError, match=r"max_connections.*greater than or equal to 16"):
        parse_args(["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--max_connections", "2"])
    served = ServeConfig(model_name_or_path="m", header_timeout_s=4, request_timeout_s=100, max_connections=32)
    assert options_from_config(served) == {"header_timeout_s": 4.0, "body_timeout_s": 30.0, "max_connections": 32,
                                           "max_request_bytes": 1_048_576, "response_timeout_s": 160.0}


def test_comma_list_is_a_plain_list_type_for_other_specs():
    class Files(Spec):
        paths: CommaList[str]
        """Files, comma separated."""

    assert Files(paths="a, b").paths == ["a", "b"] and Files(paths=["a,b"]).paths == ["a,b"]  # a YAML item is kept whole
