"""The one-of-each helpers: directories on Linux and macOS, the atomic write, the record reader,
durations and tables."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

import pytest

from nbremote import paths
from nbremote.durations import ago, duration
from nbremote.tables import table


@pytest.mark.parametrize(
    ("platform", "config", "cache"),
    [
        ("linux", "xdg-config/nbremote", "xdg-cache/nbremote"),
        ("darwin", "home/Library/Application Support/nbremote", "home/Library/Caches/nbremote"),
    ],
)
def test_directories_follow_the_platform(tmp_path, monkeypatch, platform, config, cache):
    monkeypatch.setattr(paths.sys, "platform", platform)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    assert paths.config_dir() == tmp_path / config
    assert paths.cache_dir() == tmp_path / cache
    assert paths.state_file("x.json") == tmp_path / "xdg-state/nbremote/x.json"
    assert not (tmp_path / "xdg-state").exists(), "a path for a read makes no folder"


def test_linux_defaults_without_xdg_variables(tmp_path, monkeypatch):
    monkeypatch.setattr(paths.sys, "platform", "linux")
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
        monkeypatch.delenv(name, raising=False)
    assert paths.config_dir() == tmp_path / ".config/nbremote"
    assert paths.cache_dir() == tmp_path / ".cache/nbremote"
    assert paths.state_file("a") == tmp_path / ".local/state/nbremote/a"


def test_atomic_write_keeps_mode_and_leaves_no_temporary_file(tmp_path):
    tmp_path = tmp_path / "etc"
    tmp_path.mkdir()
    target = tmp_path / "config"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    paths.atomic_write(target, b"new\r\n\xff")
    assert target.read_bytes() == b"new\r\n\xff"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    paths.atomic_write(tmp_path / "fresh", b"x", mode=0o600)
    assert stat.S_IMODE((tmp_path / "fresh").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config", "fresh"]


def test_an_atomic_write_never_opens_a_temporary_name_that_exists(tmp_path, monkeypatch):
    """The temporary file is made with O_EXCL under a random name: a name taken is passed over."""
    tmp_path = tmp_path / "state"
    tmp_path.mkdir()
    target = tmp_path / "sessions.json"
    taken = tmp_path / f".sessions.json.{'00' * 6}.nbremote-tmp"
    taken.write_text("someone else's")
    draws = iter([b"\0" * 6, b"\1" * 6])
    monkeypatch.setattr(paths.os, "urandom", lambda n: next(draws))
    paths.atomic_write(target, b"{}", mode=0o600)
    assert target.read_bytes() == b"{}" and taken.read_text() == "someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == [taken.name, "sessions.json"]


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"TMPDIR": "{tmp}/t"},
        {"TMPDIR": "{tmp}/missing", "TMP": "{tmp}/t"},
        {"TMPDIR": "", "TEMP": "{tmp}/t/../t"},
        {"TMPDIR": "{tmp}/read-only"},  # passed over unless root, who may write there: alike
    ],
)
def test_the_temporary_root_is_the_one_tempfile_chooses(tmp_path, monkeypatch, env):
    """Control sockets stay where they were before paths stopped importing tempfile for them."""
    import tempfile

    (tmp_path / "t").mkdir()
    (tmp_path / "read-only").mkdir(mode=0o500)
    for name in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # its cache: chosen again from this environment
    assert paths.temp_root() == tempfile.gettempdir()


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    tmp_path = tmp_path / "etc"
    tmp_path.mkdir()
    target = tmp_path / "hosts.toml"
    target.write_text("old")
    with pytest.raises(TypeError):
        paths.atomic_write(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["hosts.toml"]


def test_write_private_is_0600(tmp_path):
    paths.write_private(tmp_path / "token", "secret")
    assert stat.S_IMODE((tmp_path / "token").stat().st_mode) == 0o600


@dataclass(frozen=True)
class Record:
    port: int


def test_records_from_another_version_or_a_broken_file_are_forgotten(tmp_path):
    path = tmp_path / "records.json"
    assert paths.read_records(path, Record) == {}
    path.write_text('{"a": {"port": 1}, "b": {"port": 2, "new_field": 3}}')
    assert paths.read_records(path, Record) == {"a": Record(1)}
    path.write_text("{broken")
    assert paths.read_records(path, Record) == {}
    path.write_text("[1, 2]")
    assert paths.read_records(path, Record) == {}


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, "-"),
        (-3, "0 s"),
        (0, "0 s"),
        (59.9, "59 s"),
        (60, "1 min 00 s"),
        (3599, "59 min 59 s"),
        (3600, "1 h 00 min"),
        (86399, "23 h 59 min"),
        (86400, "1 d 0 h"),
        (200000, "2 d 7 h"),
    ],
)
def test_durations(seconds, shown):
    assert duration(seconds) == shown


def test_ago_reads_epoch_seconds_and_jupyters_iso_times():
    assert ago(1000.0, now=lambda: 1125.0) == "2 min 05 s ago"
    assert ago("1970-01-01T00:16:40.000000Z", now=lambda: 1003.0) == "3 s ago"
    assert ago(None) == "-" and ago("yesterday") == "yesterday"


def test_tables_pad_columns_and_trim_trailing_blanks():
    assert table([("NAME", "STATE", "NOTE"), ("a-long-name", "running", ""), ("b", "-", "x")]) == [
        "NAME         STATE    NOTE",
        "a-long-name  running",
        "b            -        x",
    ]
    assert table([]) == []
