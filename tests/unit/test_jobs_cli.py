"""run / jobs / logs / kill / attach / status refuse bad input before anything runs."""

from __future__ import annotations


import pytest

from nbremote import jobs
from nbremote.errors import ExitCode, NbremoteError

from clirun import run_main


@pytest.mark.parametrize("name", ["../etc", ".hidden", "a b", "x" * 65, "naïve", "a/b", "job.end", ""])
@pytest.mark.parametrize(
    "command",
    [
        ["run", "server", "--name", "{}", "--", "true"],
        ["logs", "server", "{}"],
        ["kill", "server", "{}"],
        ["attach", "server", "{}"],
    ],
)
def test_bad_job_names_are_refused_with_the_value(capsys, nothing_runs, name, command):
    code, out, err = run_main(capsys, *[name if part == "{}" else part for part in command])
    assert code == ExitCode.USAGE
    assert f"job name {name!r} is not valid" in err
    assert out == ""


@pytest.mark.parametrize("name", ["resnet", "sweep-3", "a_b.c", "x" * 64, "0"])
def test_good_names(name):
    assert jobs.validate_name(name) == name


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "server"], "Missing argument 'COMMAND...'"),
        (["run", "server", "--dir", "a\nb", "--", "true"], "directory 'a\\nb' is not valid"),
        (["run", "server", "--", "printf", "a\0b"], "NUL byte"),
        (["run", "bad host", "--", "true"], "'bad host' is not a host"),
        (["kill", "server", "job", "--signal", "STOP"], "'STOP' is not one of"),
        (["jobs", "server", "--purge"], "--purge goes with --prune"),
        (["logs", "server", "job", "--tail", "-1"], "-1 is not in the range x>=0"),
    ],
)
def test_bad_input_is_a_usage_error(capsys, nothing_runs, args, message):
    code, _, err = run_main(capsys, *args)
    assert code == ExitCode.USAGE, err
    assert message in err


def test_the_command_after_double_dash_is_kept_whole(monkeypatch, capsys):
    seen = {}

    def fake_run(**kw):
        seen.update(kw)
        raise NbremoteError("stop here", exit_code=ExitCode.ERROR)

    monkeypatch.setattr(jobs, "run", fake_run)
    code, _, _ = run_main(capsys, "run", "server", "--name", "n", "--", "python", "-c", "x", "--name", "y", "--json")
    assert code == ExitCode.ERROR
    assert seen["argv"] == ["python", "-c", "x", "--name", "y", "--json"] and seen["name"] == "n"


def test_parse_job_rejects_what_it_cannot_trust():
    good = {
        "name": "a",
        "argv": ["true"],
        "dir": "/home/a",
        "state": "exited",
        "started": 1.0,
        "runtime": 2.0,
        "launcher": "tmux",
        "exit_code": 0,
    }
    assert jobs.parse_job(good, "server").exit_code == 0
    for bad in (
        {**good, "name": "../a"},
        {**good, "argv": []},
        {**good, "state": "weird"},
        {**good, "exit_code": "0"},
        {**good, "started": True},
        None,
    ):
        with pytest.raises(NbremoteError) as caught:
            jobs.parse_job(bad, "server")
        assert caught.value.exit_code == ExitCode.AGENT_FAILED
