"""The command line through nbremote.cli.main: help, usage errors, exit codes, --json errors.

Bad input must be refused before anything runs: no ssh, no agent, no file in
the state or runtime dirs. A fixture makes any child process fail the test.
"""

from __future__ import annotations

import json

import click
import pytest

from nbremote import cli
from nbremote.errors import ExitCode

from clirun import run_main


COMMANDS = cli.cli.list_commands(click.Context(cli.cli))


def test_there_are_commands():
    assert {"up", "down", "ls"} <= set(COMMANDS)


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_group_help(capsys, flag):
    code, out, _ = run_main(capsys, flag)
    assert code == 0
    assert out.startswith("Usage: nbremote ")
    for name in COMMANDS:
        assert f"\n  {name} " in out, f"{name} is missing from the command list"


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help(capsys, name):
    code, out, _ = run_main(capsys, name, "--help")
    assert code == 0
    assert out.startswith(f"Usage: nbremote {name} ")
    command = cli.cli.get_command(click.Context(cli.cli), name)
    summary = (command.help or "").strip()
    assert summary, f"{name} has no docstring"
    assert summary.splitlines()[0] in out
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.help, f"{name} {param.opts[0]} has no help text"


def test_version(capsys):
    code, out, _ = run_main(capsys, "--version")
    assert code == 0
    assert out.startswith("nbremote, version ")


@pytest.mark.parametrize(
    "args, named",
    [
        (["up", "--", "-oProxyCommand=touch_x"], "'-oProxyCommand=touch_x' is not a host"),
        (["up", "--", "-oProxyCommand=touch /tmp/x"], "'-oProxyCommand=touch /tmp/x' is not a host"),
        (["up", "a b"], "'a b' is not a host"),
        (["up", "gpubox;id"], "'gpubox;id' is not a host"),
        (["up", "$(id)"], "'$(id)' is not a host"),
        (["up", "gpubox\n"], "'gpubox\\n' is not a host"),
        (["up", "ssh://gpubox/path"], "'ssh://gpubox/path' is not a host"),
        (["up", "--port", "0"], "0 is not in the range 1<=x<=65535"),
        (["up", "--port", "70000"], "70000 is not in the range 1<=x<=65535"),
        (["up", "--port", "eighty"], "'eighty' is not a valid integer"),
        (["up", "--timeout", "0"], "0 is not in the range x>=1"),
        (["up", "--dir", "a\nb"], "directory 'a\\nb' is not valid"),
        (["up", "--dir", ""], "directory '' is not valid"),
        (["up", "--env", "x\ty"], "environment 'x\\ty' is not valid"),
        (["up", "--bogus"], "--bogus"),
        (
            ["up", "cluster", "--slurm", "--gres=gpu:1", "--keep-output"],
            "--keep-output is not available for a Slurm job's Jupyter yet",
        ),
        (["down", "--", "-oProxyCommand=touch_x"], "'-oProxyCommand=touch_x' is not a host"),
        (["down", "--dir", "a\nb"], "directory 'a\\nb' is not valid"),
        (["ls", "--", "-oProxyCommand=touch_x"], "'-oProxyCommand=touch_x' is not a host"),
        (["ls", "a b"], "'a b' is not a host"),
        (["launch"], "No such command 'launch'"),
    ],
)
def test_bad_input_is_a_usage_error_naming_the_value(capsys, nothing_runs, args, named):
    code, out, err = run_main(capsys, *args)
    assert code == ExitCode.USAGE == 2
    assert named in err
    assert out == ""


def test_error_lines_show_message_then_hint(capsys, nothing_runs):
    _, _, err = run_main(capsys, "up", "a b")
    lines = err.splitlines()
    assert lines[0] == "✗ 'a b' is not a host"
    assert lines[1].startswith("  hint: give a name from ~/.ssh/config")


@pytest.mark.parametrize(
    "args, message",
    [
        (["up", "--json", "a b"], "'a b' is not a host"),
        (["up", "--json", "--dir", "a\nb"], "directory 'a\\nb' is not valid: it is empty or has control characters"),
        (["down", "--json", "--", "-oProxyCommand=x"], "'-oProxyCommand=x' is not a host"),
        (["ls", "--json", "--", "-x"], "'-x' is not a host"),
        (["up", "--json", "--port", "0"], "Invalid value for '--port': 0 is not in the range 1<=x<=65535."),
    ],
)
def test_json_errors_are_one_json_document_on_stdout(capsys, nothing_runs, args, message):
    code, out, err = run_main(capsys, *args)
    assert code == ExitCode.USAGE
    doc = json.loads(out)  # the whole of stdout, nothing else
    assert doc["error"] == message
    assert doc["exit_code"] == ExitCode.USAGE
    assert doc["details"] == []
    assert message in err


def test_debug_shows_the_traceback(nothing_runs):
    from nbremote.errors import NbremoteError

    with pytest.raises(NbremoteError):
        cli.main(["--debug", "up", "a b"])
