"""The front door: every verb reads its options through the one loader and `--help` renderer.

- the README's capability table shows each verb's usage line exactly as `caregpt VERB --help` prints it;
- an unknown key exits 2 with one line naming the key, its source and the nearest valid one, for every verb;
- sampling keys are one spec: `temperature: 0.7` in a predict YAML is read (and used), not rejected;
- key roles (shaping / operational / data) are field metadata, and resume naming, Tune and the cache read them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from caregpt.cli import VERBS, main

README = Path(__file__).resolve().parents[2] / "README.md"
LOADER_VERBS = ("train", "tune", "predict", "eval", "export", "serve", "chat", "webui", "distill", "data check", "run", "new-model")


def _usage(verb: str, capsys) -> str:
    try:
        code = main([*verb.split(), "--help"])
    except SystemExit as exc:  # the verbs still on argparse (kb, triage, openai-finetune) exit from --help
        code = exc.code
    assert code == 0
    first = capsys.readouterr().out.split("\n\n")[0]
    return " ".join(first.removeprefix("usage: ").split("\n")[0].split())


@pytest.mark.parametrize("verb", list(VERBS))
def test_readme_table_lists_every_verb_as_help_prints_it(verb, capsys):
    usage = _usage(verb, capsys)
    table = README.read_text(encoding="utf-8").replace("\\|", "|")
    commands = [" ".join(c.split()) for c in re.findall(r"\| `([^`]+)` \|\s*$", table, flags=re.M)]
    assert any(c.startswith(usage) or usage.startswith(c) for c in commands), f"README table lacks `{usage}`"


@pytest.mark.parametrize("verb", LOADER_VERBS)
def test_unknown_key_exits_2_naming_key_source_and_hint(verb, capsys, tmp_path):
    argv = [*verb.split(), "--temprature", "0.7"]
    if verb == "tune":
        (tmp_path / "t.yaml").write_text("tune: {search_space: {lora_rank: [4, 8]}}\n")
        argv.insert(1, str(tmp_path / "t.yaml"))
    if verb == "run":
        argv.insert(1, "pipeline.yaml")
    if verb in ("eval",):
        argv += ["--task", "generation"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "'temprature'" in err and "command line" in err, err
    if verb in ("train", "predict", "chat", "webui", "tune", "export", "data check"):
        assert "did you mean 'temperature'" in err, err


def test_sampling_keys_in_a_predict_yaml(tmp_path):
    from caregpt.eval.predict import settings_for
    from caregpt.eval.predict_cli import parse

    path = tmp_path / "predict.yaml"
    path.write_text("model_name_or_path: some/model\ndataset: hm\ntemperature: 0.7\ntop_p: 0.9\nmax_new_tokens: 64\n")
    config, settings = parse([str(path)])
    assert config.generation.temperature == 0.7
    assert settings.do_sample and settings.temperature == 0.7 and settings.top_p == 0.9 and settings.max_new_tokens == 64
    assert settings_for(config) == settings
    greedy = parse(["--model_name_or_path", "m", "--dataset", "hm"])[1]
    assert not greedy.do_sample  # nothing asked for sampling: greedy, as CareGPT predicts
    from caregpt.config.loader import ConfigError

    with pytest.raises(ConfigError, match="do_sample false decodes greedily, so temperature would be ignored"):
        parse(["--model_name_or_path", "m", "--do_sample", "false", "--temperature", "0.7"])


def test_key_roles_are_declared_once_and_read_everywhere():
    from caregpt.config.specs import field_meta, keys_with
    from caregpt.data.prepare import DATA_KEYS
    from caregpt.train.launch import OPERATIONAL_KEYS
    from caregpt.tune.space import FIXED_KEYS

    assert OPERATIONAL_KEYS == set(keys_with(role="operational"))
    assert set(DATA_KEYS) == set(keys_with(role="data"))
    assert {"template", "cutoff_len", "packing", "dataset"} <= set(DATA_KEYS)
    assert {"logging_steps", "report_to", "overwrite_cache", "storage_path"} <= OPERATIONAL_KEYS
    assert "lora_rank" not in FIXED_KEYS and "learning_rate" not in FIXED_KEYS
    for name in (*OPERATIONAL_KEYS, *DATA_KEYS):
        assert name in FIXED_KEYS, f"{name}: Tune may not search a key that does not shape the model or changes the data"
    assert field_meta("output_dir")["path"] == "out" and field_meta("checkpoint_dir")["path"] == "in"


def test_run_name_ignores_operational_keys_only(tmp_path):
    from caregpt.config.loader import load_config
    from caregpt.train.launch import run_name

    base = {"output_dir": str(tmp_path / "o")}
    assert run_name(load_config(None, base)) == run_name(load_config(None, {**base, "logging_steps": "3", "report_to": "tensorboard"}))
    assert run_name(load_config(None, base)) != run_name(load_config(None, {**base, "lora_rank": "16"}))


def test_relative_paths_resolve_against_the_working_directory(tmp_path, monkeypatch):
    from caregpt.config.loader import load_from_argv

    (tmp_path / "models" / "m").mkdir(parents=True)
    (tmp_path / "output").mkdir()
    monkeypatch.chdir(tmp_path)
    config = load_from_argv(["--model_name_or_path", "models/m", "--checkpoint_dir", "output", "--output_dir", "out",
                             "--deepspeed", "2", "--dataset_dir", "data"])
    assert config.model.model_name_or_path == str(tmp_path / "models" / "m")
    assert config.model.checkpoint_dir == [str(tmp_path / "output")]
    assert config.train.output_dir == str(tmp_path / "out")
    assert config.ray.deepspeed == "2" and config.data.dataset_dir == "data"  # a ZeRO stage / missing dir stay as written
    hub = load_from_argv(["--model_name_or_path", "org/model"])
    assert hub.model.model_name_or_path == "org/model"


def test_train_without_anything_to_do_and_do_eval_without_generation_are_refused(capsys):
    assert main(["train", "--do_train", "false", "--model_name_or_path", "m"]) == 2
    assert "nothing else to do" in capsys.readouterr().err
    assert main(["train", "--do_eval", "--model_name_or_path", "m"]) == 2
    assert "add --predict_with_generate" in capsys.readouterr().err


def test_serve_accepts_the_demo_flags():
    from caregpt.config.loader import ConfigError
    from caregpt.serve.config import load_serve_config

    config, _ = load_serve_config(["--model_name_or_path", "m", "--checkpoint_dir", "output", "--finetuning_type", "lora", "--template", "llama2"])
    assert config.finetuning_type == "lora" and config.checkpoint_dir[0].endswith("output") or config.checkpoint_dir == ["output"]
    with pytest.raises(ConfigError, match="finetuning_type=full with checkpoint_dir"):
        load_serve_config(["--model_name_or_path", "m", "--checkpoint_dir", "output", "--finetuning_type", "full"])
