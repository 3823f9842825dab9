"""verb_main: the one opening of every verb's `main` (help first, then one error line and exit 2 for a ConfigError),
the same whether the verb runs as `caregpt VERB` or as `python -m caregpt.MODULE`."""

from __future__ import annotations

import importlib
import sys

import pytest

from caregpt.config.loader import ConfigError
from caregpt.config.verb import verb_main

calls: list[list[str]] = []


@verb_main("toy", lambda: "usage: caregpt toy [--key value ...]")
def toy(argv: list[str]) -> int:
    calls.append(argv)
    if "--bad" in argv:
        raise ConfigError("--bad is not an option of toy")
    if "--crash" in argv:
        raise RuntimeError("a bug, not a usage error")
    return 0


def test_help_wins_over_bad_options_and_runs_nothing(capsys):
    calls.clear()
    assert toy(["--bad", "-h"]) == 0
    assert capsys.readouterr().out == "usage: caregpt toy [--key value ...]\n"
    assert calls == []


def test_a_config_error_is_one_line_naming_the_verb_and_exit_2(capsys):
    assert toy(["--bad"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "caregpt toy: error: --bad is not an option of toy\n" and captured.out == ""
    with pytest.raises(RuntimeError, match="a bug"):  # only configuration problems become exit 2
        toy(["--crash"])


def test_argv_defaults_to_the_command_line(monkeypatch):
    calls.clear()
    monkeypatch.setattr(sys, "argv", ["toy", "--key", "v"])
    assert toy() == 0 and calls == [["--key", "v"]]
    assert toy.__name__ == "toy"  # functools.wraps: tracebacks and docs name the verb's own function


# (module, argv with a mistake, what the error line says): each verb's main, called as `python -m` calls it
MISTAKES = [
    ("caregpt.pipeline.cli", ["pipeline.yaml", "--onlyy", "sft"], "caregpt run: error: unknown config key 'onlyy'"),
    ("caregpt.serve.cli", ["--model_name_or_path", "m", "--prot", "1"], "caregpt serve: error: unknown config key 'prot'"),
    ("caregpt.serve.front", ["--listen", "127.0.0.1:0"], "caregpt front: error: upstream is required"),
    ("caregpt.distill.cli", ["--kind", "essay", "--seeds", "x"], "caregpt distill: error: invalid kind='essay'"),
    ("caregpt.models.export_cli", ["--model_name_or_path", "m"], "caregpt export: error: output_dir is required"),
    ("caregpt.data.openai_finetune", ["--training_file", "t.jsonl", "--model", "m", "--api_key_env", "CAREGPT_TEST_NO_KEY"],
     "caregpt openai-finetune: error: set the API key in the environment variable CAREGPT_TEST_NO_KEY"),
    ("caregpt.data.deid_cli", ["--input", "missing.jsonl", "--output", "out.jsonl"], "caregpt data deid: error: input file not found"),
    ("caregpt.data.openai_export_cli", ["--format", "preference"], "caregpt data export: error: --format preference needs --feedback"),
    ("caregpt.medical.eval_cli", ["--task", "triage"], "caregpt eval: error: --task triage needs --data FILES"),
    ("caregpt.medical.triage_cli", ["--guides", "g.json"], "caregpt triage: error: the symptom text is required"),
    ("caregpt.tune.cli", ["missing.yaml"], "caregpt tune: error: config file not found: missing.yaml"),
]


@pytest.mark.parametrize(("module", "argv", "expected"), MISTAKES, ids=[m[0].removeprefix("caregpt.") for m in MISTAKES])
def test_each_verb_run_directly_prints_help_and_one_error_line(module, argv, expected, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # nothing the mistakes name exists here
    monkeypatch.delenv("CAREGPT_TEST_NO_KEY", raising=False)
    main = importlib.import_module(module).main
    assert main([*argv, "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: ")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n") == 1, err


def test_tune_without_its_config_prints_help_as_a_usage_error(capsys):
    from caregpt.tune.cli import main

    assert main([]) == 2
    assert capsys.readouterr().out.startswith("usage: caregpt tune CONFIG.yaml")
