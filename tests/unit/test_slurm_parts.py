"""Slurm, without a cluster: the batch scripts, Slurm's answers, batch options, profile fields,
and bad input refused before anything connects."""

from __future__ import annotations

import shlex
import subprocess

import pytest
from clirun import run_main

from nbremote import nodelogin, profiles, slurm, slurmopts
from nbremote.agent import launcher
from nbremote.agent import slurm as agent_slurm
from nbremote.agent.protocol import module_source
from nbremote.errors import ExitCode, NbremoteError


# --- the batch scripts ---------------------------------------------------------------


def test_jupyter_script_execs_the_launcher_with_every_path_quoted():
    script = agent_slurm.render_jupyter_script(
        "/usr/bin/python3",
        "/opt/env x/bin/jupyter-lab",
        "/home/a/my dir",
        "/home/a/.local/state/nbremote/slurm/k.token",
        "/home/a/.local/state/nbremote/slurm/k.ready",
    )
    assert script.startswith("#!/bin/sh\n") and script.count("\nexec ") == 1
    argv = shlex.split(script.split("\nexec ", 1)[1])
    assert argv[:2] == ["/usr/bin/python3", "-c"]
    assert argv[2] == module_source("launcher")
    assert argv[3:] == [
        "/opt/env x/bin/jupyter-lab",
        "/home/a/my dir",
        "/home/a/.local/state/nbremote/slurm/k.token",
        "/home/a/.local/state/nbremote/slurm/k.ready",
        "no",
    ]
    assert "#SBATCH" not in script  # options travel on sbatch's command line, as a list


def test_jupyter_script_as_root_allows_root_and_is_a_pure_function():
    args = ("/p", "/j", "/d", "/t", "/r")
    assert agent_slurm.render_jupyter_script(*args, allow_root=True).rstrip().endswith(" --allow-root")
    assert agent_slurm.render_jupyter_script(*args) == agent_slurm.render_jupyter_script(*args)


def test_jupyter_script_passes_node_login_to_the_launcher():
    script = agent_slurm.render_jupyter_script("/p", "/j", "/d", "/t", "/r.ready", node_login="auto")
    assert shlex.split(script.split("\nexec ", 1)[1])[3:] == ["/j", "/d", "/t", "/r.ready", "auto"]


# --- the launcher's view of its node ----------------------------------------------------------

ADOPT = "account    required     pam_slurm_adopt.so action_adopt_failure=allow\n"


@pytest.mark.parametrize(
    "sshd, other, adopts",
    [
        ("@include common-account\n" + ADOPT, "", True),  # Debian, appended to sshd's own stack
        ("@include common-account\n", ADOPT, True),  # in a file sshd's stack includes
        ("account include password-auth\n", ADOPT, True),  # Red Hat's include
        ("-account sufficient pam_slurm_adopt.so\n", "", True),  # optional, as some sites write it
        ("@include common-account\n# " + ADOPT, "# " + ADOPT, False),  # commented out
        ("@include common-account\n", "", False),
        ("@include ../../etc/shadow\n", "", False),  # only names in the same folder are read
    ],
)
def test_the_launcher_asks_only_where_the_nodes_sshd_runs_pam_slurm_adopt(tmp_path, sshd, other, adopts):
    (tmp_path / "sshd").write_text(sshd)
    for name in ("common-account", "password-auth"):
        (tmp_path / name).write_text(other)
    assert launcher.adopts_logins(str(tmp_path / "sshd")) is adopts


def test_no_pam_file_is_no_node_login(tmp_path):
    assert launcher.adopts_logins(str(tmp_path / "sshd")) is False


def test_the_launcher_reports_the_nodes_public_host_keys_only(tmp_path):
    blob = "AAAAC3NzaC1lZDI1NTE5AAAAIHXk7hbIk6N0h/3sKtoLQ2s7Xc5EN2O3a5bGxUSM2n1G"
    (tmp_path / "ssh_host_ed25519_key.pub").write_text(f"ssh-ed25519 {blob} root@node07\n")
    (tmp_path / "ssh_host_ecdsa_key.pub").write_text("ecdsa-sha2-nistp256 AAAA$(id) root@x\n")  # not a key
    (tmp_path / "ssh_host_rsa_key.pub").write_text("")
    (tmp_path / "ssh_host_ed25519_key").write_text("PRIVATE")  # not matched by the pattern
    assert launcher.host_keys(str(tmp_path / "ssh_host_*_key.pub")) == [f"ssh-ed25519 {blob}"]
    assert launcher.side_file("/s/KEY.ready", "listen") == "/s/KEY.listen"


def test_the_launcher_never_takes_the_token_on_its_command_line():
    launcher = module_source("launcher")
    assert "JUPYTER_TOKEN_FILE" in launcher
    assert "--ServerApp.token" not in launcher and "--NotebookApp.token" not in launcher


def test_command_script_runs_the_argv_exactly(tmp_path):
    argv = ["printf", "%s|", "a b", "$HOME", "it's", "`id`", ";rm -rf /"]
    script = tmp_path / "job.sh"
    script.write_text(agent_slurm.render_command_script(argv))
    done = subprocess.run(["/bin/sh", str(script)], capture_output=True, text=True, check=True)
    assert done.stdout == "a b|$HOME|it's|`id`|;rm -rf /|"


# --- what Slurm says -------------------------------------------------------------------

SHOW = (
    "JobId=81 JobName=nbremote-jupyter UserId=alice(1000) JobState=RUNNING Reason=None "
    "RunTime=00:12:05 TimeLimit=02:00:00 NodeList=gpu07 BatchHost=gpu07 ExitCode=0:0 "
    "Command=/home/alice/my job.sh TresPerNode=gres:gpu:1 JOB_GRES=gpu:a100:1"
)


def test_parse_show_keeps_values_with_spaces():
    fields = agent_slurm.parse_show(SHOW)
    assert fields["Command"] == "/home/alice/my job.sh" and fields["JobState"] == "RUNNING"


def test_describe_a_running_job():
    doc = agent_slurm.describe("81", agent_slurm.parse_show(SHOW))
    assert doc == {
        "job_id": "81",
        "state": "RUNNING",
        "reason": None,
        "node": "gpu07",
        "gpus": {"count": 1, "type": "a100"},
        "elapsed": 725,
        "time_limit": 7200,
        "time_left": 6475,
        "exit_code": 0,
    }


def test_describe_a_pending_job_and_one_slurm_forgot():
    info = agent_slurm.parse_show(
        "JobId=82 JobState=PENDING Reason=Resources RunTime=00:00:00 "
        "TimeLimit=UNLIMITED NodeList= TresPerJob=gres:gpu:2 ExitCode=0:0"
    )
    doc = agent_slurm.describe("82", info)
    assert (doc["state"], doc["reason"], doc["node"], doc["gpus"], doc["time_left"]) == (
        "PENDING",
        "Resources",
        None,
        {"count": 2, "type": None},
        None,
    )
    assert agent_slurm.describe("83", None)["state"] == "GONE"


def test_state_flags_and_signals():
    info = agent_slurm.parse_show("JobId=84 JobState=CANCELLED by 1000 ExitCode=0:15")
    doc = agent_slurm.describe("84", info)
    assert doc["state"] == "CANCELLED" and doc["exit_code"] == -15


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("00:00:05", 5),
        ("1-02:03:04", 93784),
        ("05:00", 300),
        ("10", 600),
        ("UNLIMITED", None),
        ("INVALID", None),
        ("", None),
    ],
)
def test_slurm_durations(text, seconds):
    assert agent_slurm.seconds(text) == seconds


# --- batch options -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, options",
    [
        ("--gres=gpu:1 --time=2:00:00", ["--gres=gpu:1", "--time=2:00:00"]),
        ("--partition gpu -t 30 -G 2", ["--partition=gpu", "--time=30", "--gpus=2"]),
        ("-pdebug -c4 --mem=16G --exclusive", ["--partition=debug", "--cpus-per-task=4", "--mem=16G", "--exclusive"]),
        ("--comment 'two words'", ["--comment=two words"]),
        ("", []),
    ],
)
def test_options_become_name_value_words(text, options):
    assert slurmopts.parse(text) == options


@pytest.mark.parametrize(
    "text, named, why",
    [
        ("--output=/tmp/x", "--output=/tmp/x", "nbremote sets --output itself"),
        ("-o /tmp/x", "-o", "nbremote sets --output itself"),
        ("--wrap=id", "--wrap=id", "nbremote sets --wrap itself"),
        ("--chdir=/", "--chdir=/", "use --dir"),
        ("--frobnicate", "--frobnicate", "not an sbatch option nbremote passes on"),
        ("gpu:1", "gpu:1", "options start with '-'"),
        ("--time", "--time", "--time needs a value"),
        ("--exclusive=yes", "--exclusive=yes", "--exclusive takes no value"),
        ("--partition=", "--partition=", "empty or has control characters"),
        ("--comment=$'a\\nb'", None, None),
    ],
)
def test_bad_options_are_refused_naming_them(text, named, why):
    if named is None:  # shlex keeps $'..' literally: the value has no newline, and that is fine
        slurmopts.parse(text)
        return
    with pytest.raises(NbremoteError) as caught:
        slurmopts.parse(text)
    assert caught.value.message.startswith(f"Slurm option {named!r} is not accepted")
    assert why in caught.value.message
    assert caught.value.exit_code == ExitCode.USAGE


def test_a_newline_in_a_value_is_refused():
    with pytest.raises(NbremoteError, match="control characters"):
        slurmopts.parse(["--comment=a\nb"])


def test_unbalanced_quotes():
    with pytest.raises(NbremoteError, match="cannot read the Slurm options") as caught:
        slurmopts.parse("--comment 'x")
    assert caught.value.exit_code == ExitCode.USAGE


def test_the_command_replaces_the_profiles_option_of_the_same_name():
    merged = slurmopts.merge(["--partition=gpu", "--time=2:00:00", "--gres=gpu:1"], ["--time=30", "--qos=high"])
    assert merged == ["--partition=gpu", "--gres=gpu:1", "--time=30", "--qos=high"]


# --- profile fields -----------------------------------------------------------------------

CLUSTER = """
[hosts.cluster]
addresses = ["login.example.org"]
scheduler = "slurm"

[hosts.cluster.slurm]
partition = "gpu"
time = "2:00:00"
gres = "gpu:1"
cpus = 4
mem = "16G"
account = "proj42"
extra = ["--qos=normal", "--constraint=a100"]
"""


def test_profile_with_a_scheduler_and_batch_options(tmp_path):
    path = tmp_path / "hosts.toml"
    path.write_text(CLUSTER.replace('scheduler = "slurm"\n', 'scheduler = "slurm"\nnode_login = "yes"\n'))
    profile = profiles.load(path)["cluster"]
    assert profile.scheduler == "slurm" and profile.node_login == "yes"
    assert profile.slurm == (
        "--partition=gpu",
        "--time=2:00:00",
        "--gres=gpu:1",
        "--cpus-per-task=4",
        "--mem=16G",
        "--account=proj42",
        "--qos=normal",
        "--constraint=a100",
    )
    profiles.save({"cluster": profile}, path)  # `add` and `remove` rewrite the file: nothing may be lost
    assert profiles.load(path)["cluster"] == profile


@pytest.mark.parametrize(
    "change, line, message",
    [
        (('scheduler = "slurm"', 'scheduler = "pbs"'), 4, "scheduler 'pbs' is not one of slurm"),
        (('scheduler = "slurm"', 'scheduler = "slurm"\nnode_login = true'), 5, "node_login True is not one of"),
        (
            ('scheduler = "slurm"', 'scheduler = "slurm"\nnode_login = "always"'),
            5,
            "node_login 'always' is not one of auto, yes, no",
        ),
        (("cpus = 4", "cpus = [4]"), 10, "cpus must be a string or a number"),
        (('mem = "16G"', 'memory = "16G"'), 11, "unknown key 'memory'"),
        (('"--qos=normal"', '"--output=x"'), 13, "nbremote sets --output itself"),
        (('gres = "gpu:1"', 'gres = ""'), 9, "Slurm option '--gres=' is not accepted"),
    ],
)
def test_bad_profile_fields_name_file_and_line(tmp_path, change, line, message):
    path = tmp_path / "hosts.toml"
    path.write_text(CLUSTER.replace(*change))
    with pytest.raises(NbremoteError) as caught:
        profiles.load(path)
    assert caught.value.message.startswith(f"{path}:{line}: ")
    assert message in caught.value.message
    assert caught.value.exit_code == ExitCode.USAGE


# --- the client's view ----------------------------------------------------------------------


def _job(**kw):
    doc = {
        "job_id": "81",
        "state": "RUNNING",
        "reason": None,
        "node": "gpu07",
        "gpus": {"count": 1, "type": "a100"},
        "elapsed": 725,
        "time_limit": 7200,
        "time_left": 6475,
        "dir": "/home/a",
        "local_port": 8890,
    }
    doc.update(kw)
    return slurm.clean_job(doc) | {"local_port": doc["local_port"]}


def test_ls_table_and_its_warnings():
    lines, warnings = slurm.render_ls(
        [
            _job(),
            _job(job_id="82", time_left=300, elapsed=6900),
            _job(job_id="83", state="PENDING", reason="Priority", node=None, elapsed=0, local_port=None),
            _job(job_id="84", state="TIMEOUT", time_left=None, local_port=None),
        ]
    )
    assert lines[0].split() == ["DIR", "JOB", "STATE", "GPUS", "ELAPSED", "TIME", "LEFT", "FORWARD"]
    assert lines[1].split() == [
        "/home/a",
        "81",
        "running",
        "on",
        "gpu07",
        "1×a100",
        "12",
        "min",
        "05",
        "s",
        "1",
        "h",
        "47",
        "min",
        "localhost:8890",
    ]
    assert lines[3].split()[:4] == ["/home/a", "83", "pending", "(Priority)"]
    assert "ended: time limit reached" in lines[4]
    assert warnings == [
        "Slurm job 82 has only 5 min 00 s left: save your work",
        "Slurm job 84 reached its time limit; `nbremote up` submits a new one",
    ]


@pytest.mark.parametrize(
    "doc, what",
    [
        ({"token": "short"}, "token"),
        ({"job_id": "81; rm"}, "Slurm job id"),
        ({"addr": "-oProxyCommand=x y"}, "node address"),
        ({"port": 0}, "port"),
        ({"mode": "shell"}, "server"),
    ],
)
def test_a_bad_server_from_the_agent_is_refused(doc, what):
    good = {
        "token": "a" * 48,
        "job_id": "81",
        "addr": "10.0.0.7",
        "node": "gpu07",
        "port": 41234,
        "dir": "/h",
        "mode": "lab",
    }
    with pytest.raises(NbremoteError) as caught:
        slurm.parse_server(good | doc, "cluster")
    assert caught.value.message == f"the agent on cluster sent an invalid {what}"
    assert caught.value.exit_code == ExitCode.AGENT_FAILED


def test_a_server_on_the_nodes_loopback_comes_with_the_keys_to_pin():
    good = {"token": "a" * 48, "job_id": "81", "addr": "10.0.0.7", "node": "gpu07", "port": 41234, "dir": "/h"}
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHXk7hbIk6N0h"
    server = slurm.parse_server(good | {"mode": "lab", "listen": "loopback", "host_keys": [key]}, "cluster")
    assert server.loopback and server.host_keys == (key,) and server.addr == "10.0.0.7"
    assert not slurm.parse_server(good | {"mode": "lab"}, "cluster").loopback  # an older job's ready file
    for bad in ({"listen": "0.0.0.0"}, {"host_keys": "ssh-ed25519 AAAA"}, {"host_keys": [1]}):
        with pytest.raises(NbremoteError) as caught:
            slurm.parse_server(good | {"mode": "lab"} | bad, "cluster")
        assert caught.value.message == "the agent on cluster sent an invalid listener"


@pytest.mark.parametrize(
    "doc, what",
    [
        ({"job_id": None}, "Slurm job id"),
        ({"addr": "-oProxyCommand=x"}, "node address"),
        ({"node": ""}, "node address"),
        ({"host_keys": None}, "host key"),
    ],
)
def test_a_bad_question_from_a_job_is_refused(doc, what):
    good = {"job_id": "81", "node": "gpu07", "addr": "10.0.0.7", "host_keys": []}
    with pytest.raises(NbremoteError) as caught:
        slurm.parse_question(good | doc, "cluster")
    assert caught.value.message == f"the agent on cluster sent an invalid {what}"


# --- the laptop's ssh to the node ---------------------------------------------------------------

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHXk7hbIk6N0h/3sKtoLQ2s7Xc5EN2O3a5bGxUSM2n1G"


def test_the_keys_the_job_read_are_pinned_alone_in_a_private_file(isolated):
    nodelogin.pin("cluster", "gpu07", "10.0.0.7", [KEY, "ssh-ed25519 AAAA x\nevil.example ssh-rsa AAAA"], "81")
    path = nodelogin.known_hosts_path("cluster", "10.0.0.7")
    assert path.read_text() == f"nbremote-node.10.0.0.7 {KEY}\n"  # a line smuggling a second entry is dropped
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert nodelogin.known_hosts_path("other", "10.0.0.7") != path  # one file per cluster and node


def test_no_key_to_pin_is_a_clear_error_and_pins_nothing(isolated):
    with pytest.raises(NbremoteError) as caught:
        nodelogin.pin("cluster", "gpu07", "10.0.0.7", ["not a key"], "81")
    assert caught.value.message == (
        "Slurm job 81 found no host key of compute node gpu07 to pin "
        "(none readable in /etc/ssh/ssh_host_*_key.pub there)"
    )
    assert caught.value.exit_code == ExitCode.HOST_KEY and 'node_login = "no"' in caught.value.hint
    assert not nodelogin.known_hosts_path("cluster", "10.0.0.7").exists()


def test_the_node_is_reached_through_the_login_master_with_its_key_pinned(isolated):
    from nbremote.remote import Host
    from nbremote.ssh import parse_target

    place = Host(parse_target("alice@login.example.org"), timeout=5, interactive=False, persist=True)
    conn = nodelogin.connection(place, "10.0.0.7", label="gpu07")
    options = dict(conn.target.options)
    assert conn.target.destination == "10.0.0.7" and conn.batch
    assert options["User"] == "alice" and options["Port"] == "22"
    assert options["HostKeyAlias"] == "nbremote-node.10.0.0.7" and options["StrictHostKeyChecking"] == "yes"
    assert options["UserKnownHostsFile"] == str(nodelogin.known_hosts_path(place.host, "10.0.0.7"))
    assert options["GlobalKnownHostsFile"] == "/dev/null"
    proxy = shlex.split(options["ProxyCommand"])
    assert proxy[:5] == ["ssh", "-o", "ControlMaster=no", "-o", "BatchMode=yes"]
    assert f"ControlPath={place.connection.control_path}" in proxy  # the login's master: no second login
    assert proxy[-4:] == ["-W", "10.0.0.7:22", "--", "alice@login.example.org"]
    assert conn.control_path != place.connection.control_path


# --- bad input on the command line: refused before anything runs ---------------------------


@pytest.mark.parametrize(
    "args, named",
    [
        (["up", "cluster", "--slurm", "--output=/tmp/x"], "'--output=/tmp/x'"),
        (["up", "cluster", "--slurm", "gpu:1"], "'gpu:1'"),
        (["run", "cluster", "--slurm", "--wrap=id", "--", "true"], "'--wrap=id'"),
        (["run", "cluster", "--slurm", "-J x", "--", "true"], "'-J'"),
    ],
)
def test_bad_slurm_options_on_the_command_line(capsys, nothing_runs, args, named):
    code, out, err = run_main(capsys, *args)
    assert code == ExitCode.USAGE
    assert err.startswith(f"✗ Slurm option {named} is not accepted")
    assert "hint: pass sbatch options such as" in err


def test_a_bad_profile_field_stops_up_before_it_connects(capsys, nothing_runs, isolated):
    path = profiles.profiles_path()
    path.parent.mkdir(parents=True)
    path.write_text(CLUSTER.replace('time = "2:00:00"', 'time = "2:00:00\\n"'))
    before = path.read_text()
    code, out, err = run_main(capsys, "up", "cluster")
    assert code == ExitCode.USAGE
    assert f"{path}:8: Slurm option '--time=2:00:00\\n' is not accepted" in err
    assert path.read_text() == before
