"""server ddns's parts that need no DNS server: the key file, the name, the record of the last
update, the systemd unit and its install seam, the invite's order. The updates themselves are
tested against BIND in tests/lab/test_ddns.py."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from nbremote.addresses import Address
from nbremote.errors import ExitCode, NbremoteError
from nbremote.server import ddns, steps
from clirun import run_main

# As `tsig-keygen -a hmac-sha256 ddns-key` writes it.
KEY = 'key "ddns-key" {\n\talgorithm hmac-sha256;\n\tsecret "mo2ZGjT3tlY0dNe9Mk2cxq6m6hUNW2FKbkBrm2wXL2A=";\n};\n'
BLOB = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def usage_error(call) -> NbremoteError:
    with pytest.raises(NbremoteError) as caught:
        call()
    assert caught.value.exit_code == ExitCode.USAGE
    return caught.value


# --- the key file ---------------------------------------------------------------------------


def test_a_key_as_tsig_keygen_writes_it_is_read_and_makes_a_keyring():
    key = ddns.parse_key(KEY, "k")
    assert key == ddns.TsigKey("ddns-key", "hmac-sha256", "mo2ZGjT3tlY0dNe9Mk2cxq6m6hUNW2FKbkBrm2wXL2A=")
    (name, tsig), *_ = key.keyring().items()
    assert str(name) == "ddns-key." and str(tsig.algorithm) == "hmac-sha256."


def test_comments_around_the_key_are_ignored():
    text = "# made on the DNS server\n// for gpubox\n/* a block\n comment */\n" + KEY.replace(
        ";\n\tsecret", "; # x\n\tsecret"
    )
    assert ddns.parse_key(text, "k").name == "ddns-key"


def test_a_secret_that_holds_comment_marks_is_read_whole():
    # tsig-keygen's base64 can hold "//": inside the quotes it starts no comment.
    secret = "ab//cd//" + "A" * 35 + "="
    text = f'// the key\nkey "ddns-key" {{\n\talgorithm hmac-sha256;\n\tsecret "{secret}";\n}};\n'
    assert ddns.parse_key(text, "k").secret == secret


@pytest.mark.parametrize(
    "text, message",
    [
        ("secret = hunter2\n", "k holds no TSIG key in BIND's format"),
        (KEY + KEY.replace("ddns-key", "other"), "k holds 2 TSIG keys in BIND's format"),
        (KEY.replace("hmac-sha256", "hmac-md5"), "the TSIG key in k has algorithm hmac-md5, not one of hmac-sha1"),
        (KEY.replace("\talgorithm hmac-sha256;\n", ""), "the TSIG key in k has algorithm none"),
        (KEY.replace("mo2ZGjT3", "mo2Z!jT3"), "the TSIG key in k has no secret in base64"),
        (KEY.replace('"mo2ZGjT3tlY0dNe9Mk2cxq6m6hUNW2FKbkBrm2wXL2A="', '""'), "has no secret in base64"),
    ],
    ids=["not a key", "two keys", "md5", "no algorithm", "not base64", "empty secret"],
)
def test_a_bad_key_file_is_refused(text, message):
    assert message in usage_error(lambda: ddns.parse_key(text, "k")).message


def test_the_key_file_must_be_private(tmp_path):
    path = tmp_path / "ddns.key"
    path.write_text(KEY)
    os.chmod(path, 0o640)
    error = usage_error(lambda: ddns.read_key(path, euid=os.geteuid()))
    assert error.message == f"the TSIG key file {path} is mode 0640: others can read the key"
    assert error.hint == f"chmod 600 {path}"
    os.chmod(path, 0o600)
    assert ddns.read_key(path, euid=os.geteuid()).name == "ddns-key"


def test_the_key_file_must_be_root_s_or_the_caller_s(tmp_path):
    path = tmp_path / "ddns.key"
    path.write_text(KEY)
    os.chmod(path, 0o600)
    owner = path.stat().st_uid
    stranger = 54321 if owner != 54321 else 54322
    if owner == 0:
        os.chown(path, stranger, -1)  # root: the file belongs to someone else
        caller = 0
    else:
        caller = stranger  # not root: the file is ours, the caller someone else
    error = usage_error(lambda: ddns.read_key(path, euid=caller))
    assert "anyone who can change it can move the name" in error.message
    assert error.hint == f"sudo chown root: {path}"


def test_a_missing_key_file_says_so(tmp_path):
    error = usage_error(lambda: ddns.read_key(tmp_path / "none.key"))
    assert error.message == f"cannot read the TSIG key file {tmp_path / 'none.key'}: No such file or directory"


# --- names, zones, servers -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, name",
    [("gpubox.example.org", "gpubox.example.org"), ("GPUbox.Example.org.", "gpubox.example.org"), ("a.b", "a.b")],
)
def test_a_full_name_is_taken_lowercase_without_its_dot(text, name):
    assert ddns.check_name(text) == name


@pytest.mark.parametrize(
    "text", ["gpubox", "203.0.113.7", "2001:db8::1", "-x.example.org", "gpu box.example.org", "_acme.example.org", ""]
)
def test_a_name_that_is_not_a_full_dns_name_is_refused(text):
    error = usage_error(lambda: ddns.check_name(text))
    assert error.message == f"{text!r} is not a DNS name to point at this machine"


def test_the_zone_must_hold_the_name():
    assert ddns.check_zone("gpubox.example.org", "Example.org.") == "example.org"
    assert ddns.check_zone("example.org", "example.org") == "example.org"
    error = usage_error(lambda: ddns.check_zone("gpubox.example.org", "ample.org"))
    assert error.message == "gpubox.example.org is not inside the zone 'ample.org'"


@pytest.mark.parametrize(
    "text, address",
    [
        ("198.51.100.53", Address("198.51.100.53", 53)),
        ("198.51.100.53:5353", Address("198.51.100.53", 5353)),
        ("[2001:db8::53]:5353", Address("2001:db8::53", 5353)),
        ("ns1.example.org", Address("ns1.example.org", 53)),
    ],
)
def test_the_dns_server_is_an_address_or_name_with_port_53_by_default(text, address):
    assert ddns.parse_server(text) == address


# --- one check: only on change -----------------------------------------------------------------


def _plan(port: int = 53, **kw) -> ddns.Plan:
    return ddns.Plan(
        name="gpubox.example.org",
        server=Address("127.0.0.1", port),
        key=ddns.parse_key(KEY, "k"),
        timeout=0.5,
        **kw,
    )


def _closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unchanged_address_sends_nothing_and_keeps_the_record(tmp_path):
    record = ddns.DdnsRecord(tmp_path / "ddns.json")
    # Nothing listens on that port: any update sent would fail the check.
    plan = _plan(port=_closed_udp_port())
    last = {"name": plan.name, "server": str(plan.server), "zone": "example.org", "address": "11.22.33.1", "at": 1.0}
    record.save(last)
    outcome = ddns.check_once(plan, record, lambda: ("11.22.33.1", "the router (UPnP)"))
    assert (outcome.updated, outcome.address, outcome.zone, outcome.previous) == (
        False,
        "11.22.33.1",
        "example.org",
        "11.22.33.1",
    )
    assert record.last() == last


def test_a_new_address_is_sent_and_a_silent_server_leaves_the_record(tmp_path):
    record = ddns.DdnsRecord(tmp_path / "ddns.json")
    plan = _plan(port=_closed_udp_port(), zone="example.org")
    last = {"name": plan.name, "server": str(plan.server), "zone": "example.org", "address": "11.22.33.1", "at": 1.0}
    record.save(last)
    with pytest.raises(NbremoteError) as caught:
        ddns.check_once(plan, record, lambda: ("11.22.33.2", "the router (UPnP)"))
    assert caught.value.exit_code == ExitCode.UNREACHABLE
    assert f"the DNS server {plan.server}" in caught.value.message
    assert record.last() == last


def test_the_record_names_the_dns_name_for_the_invite(tmp_path):
    assert ddns.known_name(tmp_path) is None
    ddns.DdnsRecord(tmp_path / ddns.RECORD).save({"name": "gpubox.example.org", "address": "11.22.33.1"})
    assert ddns.known_name(tmp_path) == "gpubox.example.org"


def test_keep_waits_out_a_missing_wan_address_and_a_silent_dns_server(tmp_path):
    record = ddns.DdnsRecord(tmp_path / "ddns.json")
    plan = _plan(port=_closed_udp_port(), zone="example.org")
    answers = iter(
        [
            NbremoteError("could not find the WAN address"),
            ("11.22.33.2", "router"),  # the DNS server's port is closed: unreachable, waited out
        ]
    )

    def wan():
        answer = next(answers)
        if isinstance(answer, NbremoteError):
            raise answer
        return answer

    waited: list[str] = []
    slept: list[float] = []
    ddns.keep(
        plan,
        record,
        wan,
        period=7,
        on_outcome=lambda o: pytest.fail("nothing can have been updated"),
        on_error=lambda e: waited.append(e.message),
        sleep=slept.append,
        rounds=2,
    )
    assert slept == [7, 7]
    assert waited[0] == "could not find the WAN address"
    assert f"the DNS server {plan.server}" in waited[1]


# --- the systemd timer ---------------------------------------------------------------------


def test_the_units_check_once_at_boot_and_every_period():
    files = ddns.unit_files(
        ["/opt/nb env/bin/nbremote", "server", "ddns", "gpubox.example.org", "--key", "/etc/nbr/100%.key"],
        name="gpubox.example.org",
        period=300,
        state_dir=Path("/var/lib/nbr state"),
    )
    assert files["nbremote-ddns.service"] == (
        "# Written by `nbremote server ddns --install-timer`; `--remove-timer` takes it out.\n"
        "[Unit]\n"
        "Description=nbremote: point gpubox.example.org at this network's WAN address\n"
        "Wants=network-online.target\n"
        "After=network-online.target\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        'Environment="NBREMOTE_STATE_DIR=/var/lib/nbr state"\n'
        'ExecStart="/opt/nb env/bin/nbremote" server ddns gpubox.example.org --key /etc/nbr/100%%.key\n'
    )
    assert files["nbremote-ddns.timer"] == (
        "# Written by `nbremote server ddns --install-timer`; `--remove-timer` takes it out.\n"
        "[Unit]\n"
        "Description=nbremote: check every 300 s that gpubox.example.org points at this network\n"
        "\n"
        "[Timer]\n"
        "OnBootSec=30s\n"
        "OnUnitActiveSec=300s\n"
        "AccuracySec=1s\n"
        "\n"
        "[Install]\n"
        "WantedBy=timers.target\n"
    )


class Recorder:
    def __init__(self, returncode: int = 0) -> None:
        self.calls: list[list[str]] = []
        self.returncode = returncode

    def __call__(self, argv, **kw):
        self.calls.append(list(argv))
        return subprocess.CompletedProcess(argv, self.returncode, "", "Failed to enable unit.")


def test_the_timer_is_installed_and_removed_through_systemctl_where_systemd_runs(tmp_path):
    (tmp_path / "run/systemd/system").mkdir(parents=True)
    units = tmp_path / "etc/systemd/system"
    units.mkdir(parents=True)
    files = ddns.unit_files(
        ["nbremote", "server", "ddns", "a.example.org"], name="a.example.org", period=60, state_dir=None
    )
    run = Recorder()
    written = ddns.install_timer(files, run=run, root=tmp_path, unit_dir=units)
    assert written == [units / "nbremote-ddns.service", units / "nbremote-ddns.timer"]
    assert (units / "nbremote-ddns.timer").read_text() == files["nbremote-ddns.timer"]
    assert oct((units / "nbremote-ddns.service").stat().st_mode & 0o777) == "0o644"
    assert run.calls == [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", "nbremote-ddns.timer"]]

    run = Recorder()
    assert ddns.remove_timer(run=run, root=tmp_path, unit_dir=units) == [
        units / "nbremote-ddns.timer",
        units / "nbremote-ddns.service",
    ]
    assert list(units.iterdir()) == []
    assert run.calls == [["systemctl", "disable", "--now", "nbremote-ddns.timer"], ["systemctl", "daemon-reload"]]
    assert ddns.remove_timer(run=Recorder(), root=tmp_path, unit_dir=units) == []


def test_no_systemd_no_timer_and_a_failing_systemctl_is_an_error(tmp_path):
    units = tmp_path / "units"
    units.mkdir()
    files = ddns.unit_files(["nbremote"], name="a.example.org", period=60, state_dir=None)
    with pytest.raises(NbremoteError, match="systemd does not run on this machine: no timer to install"):
        ddns.install_timer(files, run=Recorder(), root=tmp_path, unit_dir=units)
    assert list(units.iterdir()) == []
    (tmp_path / "run/systemd/system").mkdir(parents=True)
    with pytest.raises(NbremoteError, match="`systemctl daemon-reload` failed") as caught:
        ddns.install_timer(files, run=Recorder(1), root=tmp_path, unit_dir=units)
    assert caught.value.details == ["Failed to enable unit."]


# --- the invite: the name first among the WAN addresses --------------------------------------


def test_the_invite_offers_the_dns_name_after_the_lan_and_before_the_wan_address():
    made = steps.build_invite(
        user="houser",
        lan=["192.168.1.112", "fd00::5"],
        wan="203.0.113.7",
        extra=["gpubox.example.org", "10.8.0.2"],
        port=22222,
        host_key_line=f"ssh-ed25519 {BLOB} root@box",
        dns_name="gpubox.example.org",
    )
    assert made.hosts == ("192.168.1.112", "gpubox.example.org", "203.0.113.7", "10.8.0.2")


# --- the command line ------------------------------------------------------------------------


def test_the_command_needs_the_name_server_and_key_unless_removing_the_timer(capsys):
    code, _, err = run_main(capsys, "server", "ddns", "gpubox.example.org", "--server", "198.51.100.53")
    assert code == ExitCode.USAGE
    assert "give NAME, --server ADDR[:PORT] and --key FILE (or --remove-timer alone)" in err
    code, _, err = run_main(
        capsys,
        "server",
        "ddns",
        "a.example.org",
        "--server",
        "198.51.100.53",
        "--key",
        "k",
        "--keep",
        "--install-timer",
    )
    assert code == ExitCode.USAGE
    assert "--keep and --install-timer both keep checking: choose one" in err


def test_a_bad_name_is_refused_before_the_key_is_read(capsys, tmp_path):
    code, _, err = run_main(
        capsys, "server", "ddns", "gpubox", "--server", "198.51.100.53", "--key", str(tmp_path / "none")
    )
    assert code == ExitCode.USAGE
    assert "'gpubox' is not a DNS name to point at this machine" in err


def test_without_systemd_install_timer_stops_before_the_first_check(capsys, tmp_path, monkeypatch):
    from nbremote.server import ddns_cmd

    monkeypatch.setattr(ddns_cmd.system, "is_root", lambda: True)
    monkeypatch.setattr(ddns, "systemd_runs", lambda root=Path("/"): False)
    monkeypatch.setenv("NBREMOTE_STATE_DIR", str(tmp_path / "state"))
    key = tmp_path / "ddns.key"
    key.write_text(KEY)
    os.chmod(key, 0o600)
    code, _, err = run_main(
        capsys, "server", "ddns", "a.example.org", "--server", "198.51.100.53", "--key", str(key), "--install-timer"
    )
    assert code == ExitCode.ERROR
    assert "systemd does not run on this machine: no timer to install" in err
    assert not (tmp_path / "state").exists()
