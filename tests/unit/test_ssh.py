"""ssh.py without a server: target parsing, argv building, and reading ssh's stderr."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from nbremote.errors import ExitCode, NbremoteError
from nbremote.ssh import Connection, Endpoint, Target, _spec, classify_ssh_failure, parse_target


@pytest.mark.parametrize(
    "text, destination, port",
    [
        ("gpubox", "gpubox", None),
        ("gpu-box.lab_1", "gpu-box.lab_1", None),
        ("alice@gpubox", "alice@gpubox", None),
        ("alice@gpubox.example.org", "alice@gpubox.example.org", None),
        ("192.168.77.2", "192.168.77.2", None),
        ("root@192.168.77.2", "root@192.168.77.2", None),
        ("ssh://alice@gpubox:2222", "alice@gpubox", 2222),
        ("ssh://gpubox", "gpubox", None),
        ("ssh://alice@gpubox/", "alice@gpubox", None),
        ("ssh://[::1]:22", "::1", 22),
        ("ssh://bob@192.168.77.2:22022", "bob@192.168.77.2", 22022),
    ],
)
def test_parse_target_accepts(text, destination, port):
    assert parse_target(text) == Target(label=text, destination=destination, port=port)


@pytest.mark.parametrize(
    "text",
    [
        "-oProxyCommand=x",
        "-oProxyCommand=touch /tmp/pwned",
        "-p2222",
        "",
        "gpu box",
        " gpubox",
        "gpubox;id",
        "gpubox&&id",
        "gpubox|id",
        "$(id)",
        "a$(id)@gpubox",
        "`id`",
        "gpu`id`box",
        "gpubox\n",
        "gpubox\nProxyCommand x",
        "\tgpubox",
        "gpubox>out",
        "ssh://gpubox/path",
        "ssh://gpubox/home/alice",
        "ssh://gpubox:99999",
        "ssh://gpubox:-1",
        "ssh://gpubox:abc",
        "ssh://gpubox:0",
        "ssh://gpubox?x=1",
        "ssh://gpubox#frag",
        "ssh://",
        "ssh://a;b@gpubox",
        "ssh://-oProxyCommand=x",
    ],
)
def test_parse_target_rejects_naming_the_value(text):
    with pytest.raises(NbremoteError) as caught:
        parse_target(text)
    assert caught.value.exit_code == ExitCode.USAGE
    # repr() keeps a newline or tab visible in the message.
    assert repr(text) in caught.value.message
    assert caught.value.hint


# --- argv ---------------------------------------------------------------------


def _options(argv: list[str]) -> dict[str, str]:
    """The -o Key=Value pairs of an argv, as a dict."""
    found = {}
    for flag, value in zip(argv, argv[1:]):
        if flag == "-o":
            key, _, val = value.partition("=")
            found[key] = val
    return found


def _connection(tmp_path: Path, *, port=None, batch=True, persist=True, timeout=5.0) -> Connection:
    target = Target(label="x", destination="alice@gpubox", port=port)
    return Connection(target, control_dir=tmp_path, timeout=timeout, batch=batch, persist=persist)


@pytest.mark.parametrize(
    "batch, persist, port",
    [
        (True, True, None),
        (False, True, 2222),
        (True, False, 22),
        (False, False, None),
    ],
)
def test_command_argv(tmp_path, batch, persist, port):
    argv = _connection(tmp_path, batch=batch, persist=persist, port=port).command_argv("echo hi")
    options = _options(argv)
    assert argv[0] == "ssh"
    assert argv[-3:] == ["--", "alice@gpubox", "echo hi"]
    assert argv.index("--") == len(argv) - 3, "the destination must be the first word after --"
    assert options["ControlMaster"] == "auto"
    assert options["ControlPersist"] == ("yes" if persist else "no")
    assert Path(options["ControlPath"]).parent == tmp_path
    assert options["ConnectTimeout"] == "5"
    assert ("BatchMode" in options) == batch
    if batch:
        assert options["BatchMode"] == "yes"
    if port is None:
        assert "-p" not in argv
    else:
        assert argv[argv.index("-p") + 1] == str(port)
        assert argv.index("-p") < argv.index("--")


def test_control_path_is_per_destination_and_short(tmp_path):
    first = _connection(tmp_path).control_path
    assert first == _connection(tmp_path).control_path
    assert first != _connection(tmp_path, port=2222).control_path
    # Unix socket paths are limited to ~104 bytes; the name must not grow with the host.
    assert len(first.name) == 20


def test_connect_timeout_is_at_least_one_second(tmp_path):
    assert _options(_connection(tmp_path, timeout=0.2).command_argv("true"))["ConnectTimeout"] == "1"


# --- stderr -> error ------------------------------------------------------------

WHERE = Endpoint(user="root", hostname="192.168.77.2", port=22)
TARGET = Target(label="gpubox", destination="root@192.168.77.2")


@pytest.mark.parametrize(
    "stderr, code, message, hint_part",
    [
        (
            "ssh: connect to host 192.168.77.2 port 22: Connection refused\n",
            ExitCode.UNREACHABLE,
            "cannot reach gpubox at 192.168.77.2:22 (connection refused)",
            "sshd runs",
        ),
        (
            "ssh: connect to host 192.168.77.2 port 22: Connection timed out\n",
            ExitCode.UNREACHABLE,
            "cannot reach gpubox at 192.168.77.2:22 (no answer after 5 s)",
            "sshd runs",
        ),
        (
            "ssh: connect to host 192.168.77.2 port 22: No route to host\n",
            ExitCode.UNREACHABLE,
            "cannot reach gpubox at 192.168.77.2:22 (no route to host)",
            "address",
        ),
        (
            "ssh: Could not resolve hostname gpubox: Name or service not known\n",
            ExitCode.UNREACHABLE,
            "cannot reach gpubox at 192.168.77.2:22 (name not found)",
            "address",
        ),
        (
            "Connection closed by 192.168.77.2 port 22\n",
            ExitCode.UNREACHABLE,
            "cannot reach gpubox at 192.168.77.2:22 (the server closed the connection)",
            "sshd",
        ),
        (
            "root@192.168.77.2: Permission denied (publickey,password).\n",
            ExitCode.AUTH_FAILED,
            "root@192.168.77.2 refused the login (offered: publickey,password)",
            "nbremote add gpubox",
        ),
        (
            "Received disconnect from 192.168.77.2 port 22:2: Too many authentication failures\n"
            "Disconnected from 192.168.77.2 port 22\n",
            ExitCode.AUTH_FAILED,
            "root@192.168.77.2 refused the login",
            "nbremote add gpubox",
        ),
        (
            "No ED25519 host key is known for 192.168.77.2 and you have requested strict checking.\n"
            "Host key verification failed.\n",
            ExitCode.HOST_KEY,
            "the host key of gpubox (192.168.77.2:22) is not known",
            "ssh root@192.168.77.2",
        ),
        (
            "kex_exchange_identification: read: Connection reset by peer\nConnection reset by 192.168.77.2 port 22\n",
            ExitCode.UNREACHABLE,
            "cannot reach gpubox at 192.168.77.2:22 (the connection was reset)",
            "sshd",
        ),
        (
            "Bad owner or permissions on /root/.ssh/config\n",
            ExitCode.ERROR,
            "ssh to gpubox failed: Bad owner or permissions on /root/.ssh/config",
            "--verbose",
        ),
    ],
)
def test_classify_ssh_failure(stderr, code, message, hint_part):
    error = classify_ssh_failure(stderr, TARGET, WHERE, 5.0)
    assert (error.exit_code, error.message) == (code, message)
    assert hint_part in error.hint


def test_unknown_failure_keeps_earlier_lines_as_details():
    stderr = "debug1: one\n\ndebug1: two\nsomething odd happened\n"
    error = classify_ssh_failure(stderr, TARGET, WHERE, 5.0)
    assert error.message == "ssh to gpubox failed: something odd happened"
    assert error.details == ["debug1: one", "debug1: two"]


def _keygen(path: Path) -> tuple[str, str]:
    """A real ed25519 public key line and its SHA256 fingerprint."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(path)], check=True)
    public = path.with_suffix(".pub").read_text().strip()
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(path.with_suffix(".pub"))], check=True, capture_output=True, text=True
    )
    return public, listed.stdout.split()[1]


def test_changed_host_key_names_both_fingerprints(tmp_path):
    old_public, old_fingerprint = _keygen(tmp_path / "old")
    _, new_fingerprint = _keygen(tmp_path / "new")
    known_hosts = tmp_path / "known_hosts"
    # The offending key is on line 3, as ssh reports it, so the line number matters.
    other_public, _ = _keygen(tmp_path / "other")
    known_hosts.write_text(
        f"gitlab.example.org {other_public}\n|1|c2FsdA==|aGFzaA== {other_public}\n192.168.77.2 {old_public}\n"
    )
    assert old_fingerprint != new_fingerprint
    stderr = f"""\
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
Someone could be eavesdropping on you right now (man-in-the-middle attack)!
It is also possible that a host key has just been changed.
The fingerprint for the ED25519 key sent by the remote host is
{new_fingerprint}.
Please contact your system administrator.
Add correct host key in {known_hosts} to get rid of this message.
Offending ED25519 key in {known_hosts}:3
  remove with:
  ssh-keygen -f "{known_hosts}" -R "192.168.77.2"
Host key for 192.168.77.2 has changed and you have requested strict checking.
Host key verification failed.
"""
    error = classify_ssh_failure(stderr, TARGET, WHERE, 5.0)
    assert error.exit_code == ExitCode.HOST_KEY
    assert error.message == "the host key of gpubox (192.168.77.2:22) has changed: refusing to connect"
    assert error.details == [f"expected {old_fingerprint}", f"received {new_fingerprint}"]
    assert "ssh-keygen -R 192.168.77.2" in error.hint


def test_changed_host_key_with_unreadable_known_hosts_still_classified(tmp_path):
    stderr = (
        "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n"
        "The fingerprint for the ED25519 key sent by the remote host is\n"
        "SHA256:AAAAbbbbCCCCddddEEEEffffGGGGhhhhIIIIjjjjKKK.\n"
        f"Offending ED25519 key in {tmp_path}/missing:7\n"
        "Host key verification failed.\n"
    )
    error = classify_ssh_failure(stderr, TARGET, WHERE, 5.0)
    assert error.exit_code == ExitCode.HOST_KEY
    assert error.details == [
        "expected the key in known_hosts",
        "received SHA256:AAAAbbbbCCCCddddEEEEffffGGGGhhhhIIIIjjjjKKK",
    ]


def test_a_forward_goes_to_a_loopback_port_or_a_unix_socket():
    assert _spec(8890, 38119) == "127.0.0.1:8890:127.0.0.1:38119"
    assert (
        _spec(8890, "/home/a/.local/state/nbremote/sockets/k.sock")
        == "127.0.0.1:8890:/home/a/.local/state/nbremote/sockets/k.sock"
    )
