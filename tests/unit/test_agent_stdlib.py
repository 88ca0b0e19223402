"""The agent runs on the server's own python3 (3.8+): stdlib only, nothing from outside its folder."""

from __future__ import annotations

import ast
import glob
import json
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nbremote import agentlink

AGENT_DIR = Path(agentlink.__file__).parent / "agent"
SOURCES = sorted(AGENT_DIR.glob("*.py"))
# In sys.stdlib_module_names of a newer Python, but missing on 3.8.
AFTER_38 = {"graphlib", "zoneinfo", "tomllib", "_tokenize", "_wmi"}


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(level, module) for every import; level > 0 is relative."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or ""))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
            "import_module",
            "__import__",
        ):
            found.append((0, "<dynamic import>"))
    return found


def test_agent_has_modules():
    assert {p.stem for p in SOURCES} >= {"__init__", "main", "protocol", "jupyter", "state"}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_agent_imports_only_stdlib_and_siblings(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for level, module in _imports(tree):
        if level > 0:
            continue
        top = module.split(".")[0]
        assert top in sys.stdlib_module_names, f"{path.name} imports {module!r}, not in the standard library"
        assert top not in AFTER_38, f"{path.name} imports {module!r}, which Python 3.8 lacks"
        assert top != "nbremote", f"{path.name} imports from the client package"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_agent_parses_as_python_38(path):
    # Rejects grammar newer than 3.8 (match, parenthesised with); APIs are left to the 3.8 run below.
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 8))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_agent_has_no_runtime_annotations_newer_than_38(path):
    # `list[str]` in a def is evaluated at import on 3.8 and fails unless annotations are postponed.
    tree = ast.parse(path.read_text(encoding="utf-8"))
    postponed = any(
        isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
        for n in tree.body
    )
    if postponed:
        return
    for node in ast.walk(tree):
        annotations = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            annotations = [a.annotation for a in node.args.args + node.args.kwonlyargs] + [node.returns]
        elif isinstance(node, ast.AnnAssign):
            annotations = [node.annotation]
        for annotation in filter(None, annotations):
            for sub in ast.walk(annotation):
                assert not (
                    isinstance(sub, ast.Subscript)
                    and isinstance(sub.value, ast.Name)
                    and sub.value.id in ("list", "dict", "tuple", "set", "type")
                ), f"{path.name}:{sub.lineno} uses a 3.9+ builtin generic"
                assert not (isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.BitOr)), (
                    f"{path.name}:{sub.lineno} uses a 3.10+ `X | Y` annotation"
                )


def test_agent_imports_alone_in_an_isolated_interpreter(tmp_path):
    """A copy of the folder as package nbremote_agent, nothing else on the path, as the bootstrap does."""
    package = tmp_path / "nbremote_agent"
    shutil.copytree(AGENT_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    script = (
        "import sys, json; sys.path[:] = [p for p in sys.path if 'site-packages' not in p]; "
        f"sys.path.insert(0, {str(tmp_path)!r}); before = set(sys.modules); "
        "import nbremote_agent.main, nbremote_agent.jupyter, nbremote_agent.state, nbremote_agent.protocol; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    outside = [
        m for m in loaded if not m.startswith("nbremote_agent") and m.split(".")[0] not in sys.stdlib_module_names
    ]
    assert outside == []
    assert "nbremote" not in {m.split(".")[0] for m in loaded}


def _python38() -> str | None:
    # pyenv's shims need the real HOME, which the tests hide: take the interpreter itself.
    real_home = pwd.getpwuid(os.getuid()).pw_dir
    candidates = sorted(glob.glob(os.path.join(real_home, ".pyenv/versions/3.8*/bin/python3.8")))
    candidates += [shutil.which(name, path="/usr/bin:/usr/local/bin") for name in ("python3.8",)]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def test_bootstrap_runs_on_python_38(isolated):
    python = _python38()
    if python is None:
        pytest.skip("no python3.8 on this machine; the ast checks above still ran")
    call = agentlink.AgentCall(
        lambda request: [python, "-I", "-c", agentlink.BOOTSTRAP, agentlink.bundle()[0], request],
        where="python 3.8",
        on_ssh_failure=None,
        hello_timeout=20,
        env=dict(os.environ),
    )
    assert call.request("ls", {}) == {"servers": []}
    # up without Jupyter on the PATH exercises jupyter.py's lookups before any process starts.
    env = dict(os.environ, PATH="/nonexistent")
    call = agentlink.AgentCall(
        lambda request: [python, "-I", "-c", agentlink.BOOTSTRAP, agentlink.bundle()[0], request],
        where="python 3.8",
        on_ssh_failure=None,
        hello_timeout=20,
        env=env,
    )
    from nbremote.errors import ExitCode, NbremoteError

    with pytest.raises(NbremoteError) as caught:
        call.request("up", {"dir": str(isolated.home), "mode": "lab"})
    assert caught.value.exit_code == ExitCode.NO_JUPYTER
