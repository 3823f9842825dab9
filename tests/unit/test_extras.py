"""Optional extras: the core install imports none of them, and a missing one is one line saying what to install."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from caregpt._extras import EXTRAS, MissingExtra, require
from caregpt.cli import main as cli_main
from tests.conftest import REPO

# packages that only extras install; the core paths must run without them
OPTIONAL_MODULES = ("gradio", "bm25s", "pypdf", "docx", "trl", "optuna", "vllm")
BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
"""


def _project() -> dict:
    with open(REPO / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)["project"]


def _name(requirement: str) -> str:
    return requirement.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip().lower()


def test_extras_table_matches_pyproject_and_core_holds_none_of_them():
    project = _project()
    declared = {extra: {_name(r) for r in reqs} for extra, reqs in project["optional-dependencies"].items()}
    for extra, packages in EXTRAS.items():
        assert set(packages) <= declared[extra], (extra, set(packages) - declared[extra])
    core = {_name(r) for r in project["dependencies"]}
    optional = {p for packages in EXTRAS.values() for p in packages} - {"httpx", "psutil"}  # those two come with ray
    assert not core & optional, core & optional
    assert not core & {"tqdm", "uvicorn", "trl"}  # the library never imports them


def test_require_returns_the_module_or_names_the_extra(tmp_path, monkeypatch):
    assert require("json", extra="kb", purpose="x").dumps([]) == "[]"
    with pytest.raises(MissingExtra) as info:
        require("caregpt_no_such_module", extra="webui", purpose="the web chat")
    message = str(info.value)
    assert isinstance(info.value, ImportError) and "\n" not in message
    assert message.startswith("the web chat needs caregpt_no_such_module") and 'pip install "caregpt[webui]"' in message
    # an installed package broken inside keeps its own error: that is not a missing extra
    (tmp_path / "half_installed.py").write_text("import caregpt_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as broken:
        require("half_installed", extra="kb", purpose="x")
    assert not isinstance(broken.value, MissingExtra) and broken.value.name == "caregpt_missing_dependency"


def test_cli_prints_one_line_hints_for_missing_extras(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # None in sys.modules: `import gradio` fails as if absent
    assert cli_main(["webui"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and 'pip install "caregpt[webui]"' in err and err.startswith("caregpt webui:")

    monkeypatch.setitem(sys.modules, "bm25s", None)
    (tmp_path / "note.txt").write_text("高血压患者应低盐饮食。", encoding="utf-8")
    assert cli_main(["kb", "ingest", "--kb", str(tmp_path / "kb"), str(tmp_path / "note.txt")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].startswith("caregpt kb:") and 'pip install "caregpt[kb]"' in err and "Traceback" not in err


def test_core_commands_run_with_every_extra_absent(tmp_path):
    """A fresh interpreter where the extras' packages cannot be imported: the core verbs still load."""
    code = BLOCKER.format(blocked=set(OPTIONAL_MODULES)) + """
import importlib
for module in ("caregpt.train.launch", "caregpt.data.tokenize", "caregpt.eval.cli", "caregpt.eval.predict_cli",
               "caregpt.models.export_cli", "caregpt.serve.cli", "caregpt.serve.api", "caregpt.pipeline.run"):
    importlib.import_module(module)
from caregpt.cli import main
assert main(["train", "--help"]) == 0
raise SystemExit(main(["webui", "--api-base", "http://127.0.0.1:9/v1"]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "--model_name_or_path" in done.stdout
    assert done.stderr.strip().splitlines()[-1].startswith("caregpt webui: the web chat (caregpt webui) needs gradio")
