"""Shell completion: the scripts load in the real shells and complete profile and job names.

The bash tests source `nbremote completion bash` in a real bash and call the
function bash calls on Tab with COMP_WORDS/COMP_CWORD set as bash sets them;
fish is asked with `complete -C`, which runs its completion machinery. The
`nbremote` they call is this package (a wrapper on PATH), in this test's HOME.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.shell_completion import ShellComplete

import nbremote
from nbremote import cli, completion, jobcache, profiles, sshfiles
from nbremote.addresses import Address
from nbremote.errors import ExitCode
from nbremote.profiles import Profile

from clirun import run_main

PACKAGE_ROOT = Path(nbremote.__file__).resolve().parents[1]


@pytest.fixture
def setup(isolated, tmp_path, monkeypatch):
    """Two profiles, one more Host in ~/.ssh/config, jobs seen on gpubox, and `nbremote` on PATH."""
    profiles.save({name: Profile(name=name, addresses=(Address("10.0.0.1"),)) for name in ("gpubox", "gpulab")})
    (isolated.home / ".ssh").mkdir()
    sshfiles.user_config_path().write_text("Host mybox\n    HostName 10.0.0.3\nHost *.corp !x.corp\n")
    jobcache.remember_jobs("gpubox", ["resnet", "sweep-1"], complete=True)
    jobcache.remember_jobs("other", ["elsewhere"], complete=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "nbremote"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={PACKAGE_ROOT} exec {sys.executable} -m nbremote "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return isolated


def _bash(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=os.environ["HOME"],
    )


BASH_TAB = """
source <(nbremote completion bash) || exit 9
complete -p nbremote || exit 8
tab() {  # what bash does on Tab after the words given
  COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMPREPLY=()
  _nbremote_completion nbremote
  echo "${COMPREPLY[*]}"
}
"""


def test_bash_loads_the_script_and_completes_profile_names(setup):
    done = _bash(
        BASH_TAB + 'tab nbremote up ""; tab nbremote up gpu; tab nbremote ssh ""; tab nbremote status gpubox ""'
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "complete -o nosort -F _nbremote_completion nbremote"
    # profiles first, then the literal Host names of ~/.ssh/config (patterns are no names)
    assert lines[1:] == ["gpubox gpulab mybox", "gpubox gpulab", "gpubox gpulab", "gpubox gpulab mybox"]


def test_bash_completes_commands_options_and_job_names(setup):
    done = _bash(
        BASH_TAB + 'tab nbremote l; tab nbremote logs gpubox ""; tab nbremote kill gpubox r; '
        'tab nbremote attach nowhere ""; tab nbremote kill gpubox resnet --signal K; '
        'tab nbremote status --w; tab nbremote completion ""'
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:] == [
        "logs ls",
        "resnet sweep-1",
        "resnet",
        "",
        "KILL",
        "--watch",
        "bash zsh fish",
    ]


def test_a_broken_profile_file_gives_fewer_names_and_no_error(setup):
    profiles.profiles_path().write_text("[hosts.gpubox\n")
    done = _bash(BASH_TAB + 'tab nbremote up ""; tab nbremote remove ""')
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:] == ["mybox", ""]
    assert done.stderr == ""


def test_completing_starts_no_process_and_writes_nothing(setup, no_processes):
    before = {p: p.read_bytes() for p in setup.root.rglob("*") if p.is_file()}
    complete = ShellComplete(cli.cli, {}, "nbremote", completion.COMPLETE_VAR)
    assert [c.value for c in complete.get_completions(["up"], "")] == ["gpubox", "gpulab", "mybox"]
    assert [c.value for c in complete.get_completions(["logs", "gpubox"], "s")] == ["sweep-1"]
    assert [c.value for c in complete.get_completions(["kill", "other"], "")] == ["elsewhere"]
    assert {p: p.read_bytes() for p in setup.root.rglob("*") if p.is_file()} == before


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed (scripts/test.sh installs it)")
def test_zsh_parses_and_registers_the_script(setup, tmp_path):
    script = tmp_path / "nbremote.zsh"
    script.write_text(
        subprocess.run(["nbremote", "completion", "zsh"], capture_output=True, text=True, check=True).stdout
    )
    assert subprocess.run(["zsh", "-n", str(script)], capture_output=True, text=True).returncode == 0
    done = subprocess.run(
        [
            "zsh",
            "-f",
            "-c",
            f"autoload -U compinit && compinit -u -d {tmp_path}/zcomp "
            f"&& source {script} && print -r -- $_comps[nbremote]",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout == "_nbremote_completion\n", done.stderr
    # The exchange the zsh function makes with nbremote: type, value, description per line.
    asked = subprocess.run(
        ["nbremote"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "_NBREMOTE_COMPLETE": "zsh_complete", "COMP_WORDS": "nbremote up gpu", "COMP_CWORD": "2"},
    )
    assert asked.stdout.splitlines() == ["plain", "gpubox", "_", "plain", "gpulab", "_"]


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed (scripts/test.sh installs it)")
def test_fish_parses_the_script_and_completes_names(setup, tmp_path):
    script = tmp_path / "nbremote.fish"
    script.write_text(
        subprocess.run(["nbremote", "completion", "fish"], capture_output=True, text=True, check=True).stdout
    )
    assert subprocess.run(["fish", "--no-execute", str(script)], capture_output=True).returncode == 0
    done = subprocess.run(
        [
            "fish",
            "--no-config",
            "-c",
            f"source {script}; complete -C 'nbremote up '; echo ===; complete -C 'nbremote logs gpubox '",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.split() == ["gpubox", "gpulab", "mybox", "===", "resnet", "sweep-1"], done.stderr


def test_an_unknown_shell_is_a_usage_error(capsys, nothing_runs):
    code, out, err = run_main(capsys, "completion", "tcsh")
    assert code == ExitCode.USAGE
    assert "'tcsh' is not one of 'bash', 'zsh', 'fish'" in err
    assert out == ""


# --- the job-name cache ------------------------------------------------------------------


def test_run_adds_a_name_and_a_listing_replaces_them(isolated):
    jobcache.remember_jobs("gpubox", ["a", "b"], complete=True)
    jobcache.remember_jobs("gpubox", ["c"], complete=False)
    jobcache.remember_jobs("gpubox", ["a"], complete=False)  # started again under the same name
    assert jobcache.job_names("gpubox") == ["a", "b", "c"]
    jobcache.remember_jobs("gpubox", ["c"], complete=True)  # `jobs --prune` forgot a and b
    assert jobcache.job_names("gpubox") == ["c"]
    assert jobcache.job_names(None) == []
    path = Path(os.environ["XDG_CACHE_HOME"]) / "nbremote" / "jobs.json"
    assert json.loads(path.read_text()) == {"gpubox": ["c"]}
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700


def test_the_cache_keeps_the_newest_names_only(isolated):
    names = [f"job-{i}" for i in range(jobcache.MAX_JOBS_PER_HOST + 5)]
    for name in names:
        jobcache.remember_jobs("gpubox", [name], complete=False)
    assert sorted(jobcache.job_names("gpubox")) == sorted(names[5:])


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '{"gpubox": "resnet"}', '{"gpubox": [1, "ok"]}'])
def test_a_damaged_cache_is_read_as_what_it_holds_of_use(isolated, content):
    path = Path(os.environ["XDG_CACHE_HOME"]) / "nbremote" / "jobs.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    assert jobcache.job_names("gpubox") == (["ok"] if "ok" in content else [])
    jobcache.remember_jobs("gpubox", ["new"], complete=False)
    assert "new" in jobcache.job_names("gpubox")


def test_an_unwritable_cache_does_not_fail_the_command(isolated, monkeypatch):
    blocker = Path(os.environ["XDG_CACHE_HOME"])
    blocker.write_text("a file where the cache dir would go")
    jobcache.remember_jobs("gpubox", ["resnet"], complete=False)
    assert jobcache.job_names("gpubox") == []
