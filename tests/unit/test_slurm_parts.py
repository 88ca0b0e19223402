"""Slurm, without a cluster: the batch scripts, Slurm's answers, batch options, profile fields,
and bad input refused before anything connects."""

from __future__ import annotations

import shlex
import subprocess

import pytest
from clirun import run_main

from nbremote import profiles, slurm, slurmopts
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
    path.write_text(CLUSTER)
    profile = profiles.load(path)["cluster"]
    assert profile.scheduler == "slurm"
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
