"""add / hosts / remove / config path through the CLI: bad input refused before anything runs or is written."""

from __future__ import annotations

import json

import pytest

from nbremote import paths, profiles
from nbremote.addresses import Address
from nbremote.errors import ExitCode
from nbremote.profiles import Profile

from clirun import run_main

FP = "SHA256:" + "q8Zk" * 10 + "abc"
USER_CONFIG = b"Host server\n    HostName 192.168.77.2\n\nHost *\n    ServerAliveInterval 30\n"


@pytest.fixture
def homes(no_processes, isolated):
    """A ~/.ssh/config and a profile file that must stay byte for byte; no process may start."""
    ssh = isolated.home / ".ssh"
    ssh.mkdir()
    (ssh / "config").write_bytes(USER_CONFIG)
    profiles.save({"gpubox": Profile(name="gpubox", addresses=(Address("10.0.0.1"),))})
    before = profiles.profiles_path().read_bytes()
    files = sorted(p.name for p in paths.config_dir().iterdir())
    yield
    assert (ssh / "config").read_bytes() == USER_CONFIG
    assert sorted(p.name for p in ssh.iterdir()) == ["config"]
    assert profiles.profiles_path().read_bytes() == before
    assert sorted(p.name for p in paths.config_dir().iterdir()) == files
    assert not isolated.state.exists()


@pytest.mark.parametrize(
    "args, named",
    [
        (["add", "gpu box", "--address", "10.0.0.2"], "'gpu box'"),
        (["add", "a/b", "--address", "10.0.0.2"], "'a/b'"),
        (["add", "x;rm", "--address", "10.0.0.2"], "'x;rm'"),
        (["add", "$(id)", "--address", "10.0.0.2"], "'$(id)'"),
        (["add", "server", "--address", "10.0.0.2"], "`Host server`"),
        (["add", "gpubox", "--address", "10.0.0.2"], "'gpubox' exists already"),
        (["add", "box2", "--address", "not a host"], "'not a host'"),
        (["add", "box2", "--address", "10.0.0.2:0"], "0"),
        (["add", "box2", "--address", "10.0.0.2", "--port", "70000"], "70000"),
        (["add", "box2", "--address", "10.0.0.2", "--user", "bad user"], "'bad user'"),
        (["add", "box2"], "no address for box2"),
        (["add", "box2", "--invite", "nbr1:me@10.0.0.2:22#MD5:00:11"], "'MD5:00:11'"),
        (["add", "box2", "--invite", f"nbr1:me@10.0.0.2:22#{FP[:30]}"], repr(FP[:30])),
        (["add", "box2", "--invite", "nbr1:me@10.0.0.2:22"], "is not an nbremote invite"),
        (["add", "box2", "--invite", f"nbr1:me@10.0.0.2:22#{FP}", "--port", "22"], "leave out --address"),
        (["add", "box2", "--address", "10.0.0.2", "--key", "/nonexistent/key"], "/nonexistent/key"),
        (["remove", "box2"], "'box2'"),
        (["ssh", "box2"], "'box2'"),
    ],
)
def test_bad_input_is_refused_naming_the_value(capsys, homes, args, named):
    code, out, err = run_main(capsys, *args)
    assert code == ExitCode.USAGE, err
    assert named in err
    assert out == ""


def test_broken_profile_file_names_file_and_line(capsys, isolated, monkeypatch):
    path = profiles.profiles_path()
    path.parent.mkdir(parents=True)
    path.write_text('[hosts.gpubox]\naddresses = ["10.0.0.1"]\nuser = me\n')
    for args in (["hosts"], ["add", "box2", "--address", "10.0.0.2"], ["up", "gpubox", "--no-browser"]):
        code, _, err = run_main(capsys, *args)
        assert code == ExitCode.USAGE
        assert f"{path}:3: " in err
    path.write_text('[hosts.gpubox]\naddresses = ["10.0.0.1"]\nuser = "me"\nproxy = "x"\n')
    code, _, err = run_main(capsys, "hosts")
    assert code == ExitCode.USAGE and f"{path}:4: unknown key 'proxy'" in err


def test_hosts_lists_and_remove_forgets(capsys, homes):
    code, out, _ = run_main(capsys, "hosts", "--json")
    assert code == 0
    assert [h["name"] for h in json.loads(out)["hosts"]] == ["gpubox"]
    code, out, _ = run_main(capsys, "hosts")
    assert code == 0 and out.splitlines()[1].split() == ["gpubox", "-", "LAN", "10.0.0.1:22", "-"]


def test_remove_takes_the_block_and_pins_out(capsys, isolated):
    profiles.save(
        {
            "a": Profile(name="a", addresses=(Address("10.0.0.1"),)),
            "b": Profile(name="b", addresses=(Address("10.0.0.2"),)),
        }
    )
    from nbremote import sshfiles

    every = profiles.load()
    sshfiles.write_files(every, alias="nbremote.a", keys=[("ssh-ed25519", "AAAA")])
    sshfiles.write_files(every, alias="nbremote.b", keys=[("ssh-ed25519", "BBBB")])
    code, _, err = run_main(capsys, "remove", "a")
    assert code == 0, err
    assert list(profiles.load()) == ["b"]
    assert "Host a\n" not in sshfiles.our_config_path().read_text()
    assert "Host b\n" in sshfiles.our_config_path().read_text()
    assert sshfiles.known_hosts_path().read_text() == "nbremote.b ssh-ed25519 BBBB\n"


def test_config_path(capsys, isolated):
    code, out, _ = run_main(capsys, "config", "path")
    assert code == 0 and out == f"{isolated.root / 'config' / 'nbremote' / 'hosts.toml'}\n"
