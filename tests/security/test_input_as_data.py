"""Guarantee 4 (end to end): what the user types reaches the server as data.

Directories, environments, job names and commands full of spaces, quotes,
$(), backticks, ;, newlines, leading dashes and non-ASCII go through the real
CLI, ssh, the remote shell and the agent. Each payload tries to create a
marker file; none may appear, and what arrives is byte for byte what was typed.
A profile name never reaches the server: a bad one is refused before anything runs.
"""

from __future__ import annotations

import glob
import json
import os
import shutil

import pytest
from netlab import ALICE, LAPTOP_ADDR, LAPTOP_USER

MARK = "/tmp/nbr-injected"


def payload(n: int, mark: str = MARK) -> str:
    return f"$(touch {mark}-{n}) `touch {mark}-{n}`; touch {mark}-{n} | touch {mark}-{n} & 'q' \"dq\" é日🙂"


@pytest.fixture(autouse=True)
def no_markers(lab):
    """Markers in /tmp, or (for a payload that must be one file name) in a shell's working directory."""

    def markers() -> list[str]:
        return [
            p
            for where in ("/tmp", lab.user(ALICE).home, lab.user(LAPTOP_USER).home)
            for p in glob.glob(f"{where}/nbr-injected*")
        ]

    for path in markers():
        os.unlink(path)
    yield
    made = markers()
    for path in made:
        os.unlink(path)
    assert not made, f"a payload ran as a command: {made}"


def test_a_directory_with_every_shell_character_is_the_directory(lab):
    name = "-d " + payload(1, mark="nbr-injected")  # one file name: no slash
    home = lab.user(ALICE).home
    target = home / name
    done = lab.server_exec(["mkdir", "--", str(target)], user=ALICE)
    assert done.returncode == 0, done.stderr
    try:
        up = lab.nbremote("up", "server", f"--dir={name}", "--no-browser", "--detach", "--json", timeout=120)
        assert up.returncode == 0, up.stderr
        result = json.loads(up.stdout)
        assert result["dir"] == str(target)
        # The kernel's working directory is that very directory.
        cwd = lab.server_exec(["readlink", f"/proc/{result['pid']}/cwd"]).stdout.strip()
        assert cwd == str(target)
        listed = json.loads(lab.nbremote("ls", "server", "--json").stdout)["servers"]
        assert [s["dir"] for s in listed] == [str(target)]
        down = lab.nbremote("down", "server", f"--dir={name}", "--json")
        assert json.loads(down.stdout)["stopped"][0]["dir"] == str(target), down.stderr
    finally:
        shutil.rmtree(target, ignore_errors=True)


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--dir", "a\nb"], 2, "directory 'a\\nb' is not valid"),
        (["--dir", "no such " + payload(2)], 9, "no directory /home/nbr-alice/no such $(touch"),
        (["--env", "$(id) `id`; x é"], 8, 'no conda environment "$(id) `id`; x é" on server'),
        (["--env", payload(3)], 8, "no environment at /home/nbr-alice/$(touch /tmp/nbr-injected-3)"),
        (["--env", "/opt/" + payload(4)], 8, "no environment at /opt/$(touch"),
        (["--env", "-x\tz"], 2, "environment '-x\\tz' is not valid"),
    ],
)
def test_bad_directories_and_environments_are_named_verbatim(lab, args, code, message):
    done = lab.nbremote("up", "server", *args, "--no-browser", "--detach", timeout=120)
    assert done.returncode == code, done.stderr
    assert message in done.stderr, done.stderr
    servers = lab.user(ALICE).home / ".local" / "state" / "nbremote" / "servers"
    assert not servers.exists() or not any(servers.iterdir()), "a Jupyter was started"


def test_a_command_and_its_arguments_arrive_byte_for_byte(lab):
    argv = [
        "printf",
        "<%s>\\n",
        "a b",
        "'s'",
        '"d"',
        "$(touch /tmp/nbr-injected-5)",
        "`touch /tmp/nbr-injected-5`",
        ";",
        "&&",
        "|",
        "new\nline",
        "-n",
        "--",
        "é日🙂",
        "*",
        "~",
        "$HOME",
        "\\",
        "",
    ]
    run = lab.nbremote("run", "server", "--name=-odd_name.1", "--json", "--", *argv, timeout=60)
    assert run.returncode == 0, run.stderr
    job = json.loads(run.stdout)
    assert job["name"] == "-odd_name.1" and job["argv"] == argv
    logs = lab.nbremote("logs", "server", "-f", "--", "-odd_name.1", timeout=60)
    assert logs.returncode == 0, logs.stderr
    expected = "".join(f"<{a}>\n" for a in argv[2:])
    assert logs.stdout == expected
    listed = json.loads(lab.nbremote("jobs", "server", "--json").stdout)["jobs"]
    assert [(j["name"], j["argv"]) for j in listed] == [("-odd_name.1", argv)]


@pytest.mark.parametrize("name", ["x;touch /tmp/nbr-injected-6", "a b", "$(id)", "`id`", ".hidden", "x\ny", "é"])
def test_bad_job_names_are_refused_before_anything_runs(lab, name):
    log_size = lab.sshd_log.stat().st_size
    done = lab.nbremote("run", "server", f"--name={name}", "--", "true")
    assert done.returncode == 2, done.stderr
    assert f"job name {name!r} is not valid" in done.stderr
    with open(lab.sshd_log, errors="replace") as log:
        log.seek(log_size)
        assert not [line for line in log.read().splitlines() if "Accepted" in line and LAPTOP_ADDR in line], (
            "the laptop logged in to the server"
        )


@pytest.mark.parametrize("name", ["a b", "$(touch /tmp/nbr-injected-8)", "-oProxyCommand=touch_x", "x;y", "é\n"])
def test_bad_profile_names_are_refused_and_nothing_is_written(lab, name):
    home = lab.user(LAPTOP_USER).home
    ssh_config = (home / ".ssh" / "config").read_bytes()
    done = lab.nbremote("add", "--address", "192.168.77.2", "--user", ALICE, "--", name)
    assert done.returncode == 2, done.stderr
    assert repr(name) in done.stderr or name in done.stderr, done.stderr
    assert not (home / ".config" / "nbremote").exists()
    assert (home / ".ssh" / "config").read_bytes() == ssh_config
