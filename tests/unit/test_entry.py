"""The console script's scan of `up HOST` (entry.py), which begins the login before click is
imported: its tables are click's own, whatever it accepts click parses to the same HOST and
--timeout, and the login it begins is the one `up` takes, or is ended when `up` never does."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nbremote import cli, entry, remote, session, sessions
from nbremote.sessions import SessionRecord


def _options(command: click.Command) -> dict[str, bool]:
    """Each option name of command, run under the group, as click parses it: True for one
    that takes a value."""
    group = click.Context(cli.cli, info_name="nbremote", **cli.cli.context_settings)
    ctx = group if command is cli.cli else click.Context(command, info_name=command.name, parent=group)
    table = {}
    for param in command.get_params(ctx):
        if isinstance(param, click.Option):
            for name in [*param.opts, *param.secondary_opts]:
                table[name] = not (param.is_flag or param.count)
    return table


def test_the_tables_are_clicks_own():
    assert entry.GROUP_OPTIONS == _options(cli.cli)
    assert entry.UP_OPTIONS == _options(cli.up)
    assert entry._NOT_SURE <= set(entry.GROUP_OPTIONS) | set(entry.UP_OPTIONS)


def test_the_default_timeout_is_ups():
    (timeout,) = [p for p in cli.up.params if p.name == "timeout"]
    assert entry.scan(["up", "gpubox"]).timeout == timeout.default  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "args, host, timeout, verbose",
    [
        (["up", "gpubox"], "gpubox", 10.0, False),
        (["-v", "up", "me@gpubox", "--port", "8888", "--no-browser", "--detach"], "me@gpubox", 10.0, True),
        (["--debug", "up", "--timeout=3", "--dir", "--lab", "ssh://me@box:2222"], "ssh://me@box:2222", 3.0, True),
        (["up", "--env", "-x", "box", "--notebook", "--json", "--timeout", "2.5"], "box", 2.5, False),
    ],
)
def test_up_host_is_found(args, host, timeout, verbose):
    found = entry.scan(args)
    assert found is not None
    assert (found.host, found.timeout, found.verbose) == (host, timeout, verbose)


def test_up_options_are_found_as_click_sets_them():
    found = entry.scan(
        ["up", "box", "--dir", "a", "--dir=b", "--lab", "--notebook", "--env", "t", "--port=9", "--json"]
    )
    assert found is not None
    assert (found.directory, found.lab, found.env, found.port, found.as_json) == ("b", False, "t", 9, True)
    assert found.keep_output is None
    found = entry.scan(["up", "box", "--no-keep-output", "--detach"])
    assert found is not None and (found.keep_output, found.lab, found.directory) == (False, None, None)


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["ls", "gpubox"],
        ["up"],  # this machine: nothing to log in to
        ["--version", "up", "gpubox"],
        ["-h", "up", "gpubox"],
        ["up", "gpubox", "--help"],
        ["-x", "up", "gpubox"],
        ["up", "gpubox", "--bogus"],
        ["up", "gpubox", "other"],
        ["up", "gpubox", "--port"],
        ["up", "gpubox", "--port", "0"],
        ["up", "gpubox", "--port", "http"],
        ["up", "gpubox", "--timeout", "0.5"],
        ["up", "gpubox", "--detach=yes"],
        ["up", "--", "gpubox"],
        ["up", ""],
        ["up", "gpubox", "--slurm", "--time=10"],
        ["up", "gpubox", "--socket"],
        ["up", "gpubox", "--keep-output"],
        ["up", "gpubox", "--forward", "6006"],
    ],
)
def test_what_the_scan_is_not_sure_of_goes_to_the_cli_alone(args):
    assert entry.scan(args) is None


WORDS = st.sampled_from(
    [
        *entry.GROUP_OPTIONS,
        *entry.UP_OPTIONS,
        "up",
        "gpubox",
        "me@box",
        "--",
        "-",
        "",
        "8888",
        "0",
        "2.5",
        "--port=9",
        "--dir=proj",
        "--env=",
        "--lab=x",
    ]
)


@given(st.lists(WORDS, max_size=8))
def test_whatever_the_scan_accepts_click_parses_to_the_same_host_and_timeout(args):
    found = entry.scan(args)
    if found is None:
        return
    at = args.index("up")
    group = cli.cli.make_context("nbremote", args[: at + 1])
    assert group.params["verbose"] or group.params["debug"] or not found.verbose
    up = cli.up.make_context("up", args[at + 1 :], parent=group)
    assert (up.params["host"], up.params["timeout"]) == (found.host, found.timeout)
    # The options the early reattach builds `up`'s with (session.options_for), as click gives them.
    assert (
        up.params["directory"],
        up.params["lab"],
        up.params["env"],
        up.params["port"],
        up.params["keep_output"],
        up.params["as_json"],
    ) == (found.directory, found.lab, found.env, found.port, found.keep_output, found.as_json)


@pytest.fixture
def no_login(monkeypatch):
    """Host's login and its end, recorded instead of run."""
    calls: list[str] = []
    monkeypatch.setattr(remote.Host, "begin_login", lambda self: calls.append("begin"))
    monkeypatch.setattr(remote.Host, "abandon_login", lambda self: calls.append("abandon"))
    monkeypatch.setattr(remote, "_begun", {})
    return calls


def test_up_takes_the_login_begun_before_the_cli(no_login):
    begun = remote.begin_login_for("me@gpubox", timeout=10.0, interactive=False)
    assert remote.place_for("me@gpubox", timeout=10.0, interactive=False, persist=True) is begun
    assert remote.place_for("me@gpubox", timeout=10.0, interactive=False, persist=True) is not begun
    remote.abandon_unclaimed(begun)
    assert no_login == ["begin"]


def test_a_login_up_never_took_is_ended(no_login):
    begun = remote.begin_login_for("me@gpubox", timeout=10.0, interactive=False)
    other = remote.place_for("me@gpubox", timeout=5.0, interactive=False, persist=True)
    assert other is not begun
    remote.abandon_unclaimed(begun)
    assert no_login == ["begin", "abandon"]


def test_no_early_login_while_a_keeper_of_the_host_may_be_logging_in(no_login):
    """Two logins at once end each other's master: `up` stops the keeper first, then logs in."""
    sessions.save(SessionRecord("me@gpubox", "~", "/home/me", 8890, 38119, "t" * 32, 1, "lab", 0.0))
    holder = (
        "import fcntl, os, sys, time\n"
        "f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); f.write(str(os.getpid())); f.flush()\n"
        "print('ready', flush=True); time.sleep(60)"
    )
    path = str(sessions.keeper_pid_file("me@gpubox", "~"))
    keeper = subprocess.Popen([sys.executable, "-c", holder, path], stdout=subprocess.PIPE, text=True)
    try:
        assert keeper.stdout is not None and keeper.stdout.readline() == "ready\n"
        begun = remote.begin_login_for("me@gpubox", timeout=10.0, interactive=False)
        assert remote.place_for("me@gpubox", timeout=10.0, interactive=False, persist=True) is not begun
        remote.abandon_unclaimed(begun)
        assert no_login == []
    finally:
        keeper.kill()
        keeper.wait()


@pytest.fixture
def reattaches(monkeypatch):
    """session.reattach_early's calls from the console script, recorded instead of run."""
    calls: list[tuple[object, str, session.UpOptions, bool]] = []

    def record(place, runner, opts, console, *, as_json):
        calls.append((place, runner.name, opts, as_json))
        return False

    monkeypatch.setattr(session, "reattach_early", record)
    return calls


def test_the_early_reattach_asks_with_the_options_up_builds_from_the_profile(isolated, reattaches):
    path = isolated.root / "config" / "nbremote" / "hosts.toml"
    path.parent.mkdir(parents=True)
    path.write_text(
        '[hosts.gpubox]\naddresses = ["192.168.1.112"]\n[hosts.gpubox.up]\ndir = "proj"\nmode = "notebook"\n'
    )
    found = entry.scan(["up", "gpubox", "--json", "--timeout", "3"])
    assert found is not None
    place = object()
    entry._reattach(found, place)  # type: ignore[arg-type]
    want = session.options_for(
        "gpubox", directory=None, lab=None, env=None, port=None, timeout=3.0, socket=False, keep_output=None
    )
    assert reattaches == [(place, "host", want, True)]
    assert (want.dir, want.mode) == ("proj", "notebook")


def test_no_early_reattach_of_a_host_whose_sessions_are_slurm_jobs(reattaches):
    sessions.save(SessionRecord("cluster", "~", "/home/me", 8890, 38119, "t" * 32, 0, "lab", 0.0, runner="slurm"))
    found = entry.scan(["up", "cluster"])
    assert found is not None
    entry._reattach(found, object())  # type: ignore[arg-type]
    assert reattaches == []
