"""`pip install nbremote` from the built sdist and wheel, each in a fresh venv.

The wheel is built from the sdist (what `python -m build` does), so a file
missing from the sdist fails here too. The agent's .py files must be inside:
the client reads them from its own package and sends them to the server. The
installed copy then runs the agent on this machine (`nbremote ls`), which is
the same bundle a server would get. Dependencies come from the package index.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import nbremote

pytestmark = pytest.mark.packaging

REPO = Path(__file__).resolve().parents[2]
AGENT_SOURCES = sorted(p.name for p in (REPO / "src" / "nbremote" / "agent").glob("*.py"))
# What the build must not see: other builds, caches, the git store.
IGNORED = shutil.ignore_patterns(
    ".git", "__pycache__", "*.egg-info", "build", "dist", ".venv", ".pytest_cache", ".hypothesis", "results"
)


def _outside_env() -> dict[str, str]:
    """This environment (the index settings for pip), without what points Python at the checkout."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    # A copy, so the build writes nothing (egg-info, build/) into the checkout.
    source = tmp_path_factory.mktemp("source") / "nbremote"
    shutil.copytree(REPO, source, ignore=IGNORED)
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        env=_outside_env(),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    wheels, sdists = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0]}


def test_the_artifacts_carry_the_version_and_the_agent(dists):
    version = nbremote.__version__
    assert dists["wheel"].name == f"nbremote-{version}-py3-none-any.whl"
    assert dists["sdist"].name == f"nbremote-{version}.tar.gz"
    wheel = zipfile.ZipFile(dists["wheel"]).namelist()
    assert sorted(n.rsplit("/", 1)[1] for n in wheel if n.startswith("nbremote/agent/")) == AGENT_SOURCES
    assert "nbremote/__main__.py" in wheel
    entry_points = zipfile.ZipFile(dists["wheel"]).read(f"nbremote-{version}.dist-info/entry_points.txt").decode()
    assert "nbremote = nbremote.entry:main" in entry_points
    with tarfile.open(dists["sdist"]) as sdist:
        names = sdist.getnames()
    prefix = f"nbremote-{version}/src/nbremote/agent/"
    assert sorted(n[len(prefix) :] for n in names if n.startswith(prefix) and n.endswith(".py")) == AGENT_SOURCES
    assert f"nbremote-{version}/README.md" in names


@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_pip_install_in_a_fresh_venv(dists, kind, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=_outside_env())
    bin_dir = venv / "bin"
    done = subprocess.run(
        [str(bin_dir / "pip"), "install", "--disable-pip-version-check", "-q", str(dists[kind])],
        capture_output=True,
        text=True,
        timeout=600,
        env=_outside_env(),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # A clean environment: nothing of the checkout on the path, a private HOME.
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    version = subprocess.run(
        [str(bin_dir / "nbremote"), "--version"], capture_output=True, text=True, env=env, cwd=home, timeout=60
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout == f"nbremote, version {nbremote.__version__}\n"

    helped = subprocess.run(
        [str(bin_dir / "python"), "-m", "nbremote", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=home,
        timeout=60,
    )
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("Usage: nbremote [OPTIONS] COMMAND [ARGS]...")
    for command in ("up", "down", "doctor", "completion", "server"):
        assert f"\n  {command} " in helped.stdout

    where = subprocess.run(
        [str(bin_dir / "python"), "-c", "import nbremote; print(nbremote.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=home,
        timeout=60,
    )
    assert where.stdout.startswith(str(venv)), where.stdout  # the installed copy, not the checkout

    # The agent, read from the installed package, answers on this machine.
    listed = subprocess.run(
        [str(bin_dir / "nbremote"), "ls", "--json"],
        capture_output=True,
        text=True,
        env={**env, "XDG_RUNTIME_DIR": str(home)},
        cwd=home,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {"path": None, "servers": []}  # this machine: no path to it
