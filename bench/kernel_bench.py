"""A remote kernel in a local Jupyter: start and first execute, nbremote against sshpyk.

    sudo /opt/nbremote-lab/venv/bin/python bench/kernel_bench.py [--rtts 0,100] [--reps 3]

Needs sshpyk in a venv of its own, as its users install it:
    /usr/bin/python3 -m venv /opt/nbremote-lab/sshpyk && /opt/nbremote-lab/sshpyk/bin/pip install sshpyk==1.25

One Lab (tests/lab/netlab.py) whose laptop–server link is a DelayLink holding rtt/2 each way.
In the laptop namespace, as the laptop user, each tool's own Python runs jupyter_client's
`start_new_kernel(kernel_name=…)` (what JupyterLab, `jupyter console` and VS Code do), then
executes one cell:

  nbremote   the kernel spec of `nbremote kernels install server`
  sshpyk     `sshpyk add --ssh-host-alias server-sshpyk --remote-kernel-name python3 …`, with the
             dedicated Host alias its README asks for (ControlMaster auto, ControlPath,
             ControlPersist 10m, BatchMode) put on top of the laptop's ~/.ssh/config

Both run the same ipykernel on the server (the lab venv's python3). Each trial starts with no
ssh master and no process of the lab users (cold), then starts a second kernel while the
first one's master is still up (warm). Reported per tool and RTT, medians over the trials:
seconds to `start_new_kernel` returning (the kernel answered kernel_info through the
tunnel), to the first execute's reply after that, and the sum.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "lab"))

import netlab  # noqa: E402
from delaylink import DelayLink  # noqa: E402

SSHPYK_VENV = Path("/opt/nbremote-lab/sshpyk")
SSHPYK_ALIAS = "server-sshpyk"
SSHPYK_KERNEL = "ssh_server_python3"

CLIENT = """
import json, sys, time
from jupyter_client.manager import start_new_kernel
out = []
for _ in range(2):
    t0 = time.monotonic()
    km, kc = start_new_kernel(kernel_name=sys.argv[1], startup_timeout=180)
    t1 = time.monotonic()
    reply = kc.execute_interactive("import socket; host = socket.gethostname()", timeout=120)
    t2 = time.monotonic()
    assert reply["content"]["status"] == "ok", reply
    kc.stop_channels()
    km.shutdown_kernel()
    out.append({"start": t1 - t0, "first_execute": t2 - t1})
print(json.dumps(out))
"""


def _sshpyk_alias(lab: netlab.Lab) -> None:
    """The dedicated alias sshpyk requires, on top so its Control* settings win."""
    shown = lab.laptop_exec(["ssh", "-G", netlab.SERVER_HOST_ALIAS]).stdout
    values: dict[str, str] = {}
    keys: list[Path] = []
    home = lab.user(netlab.LAPTOP_USER).home
    for line in shown.splitlines():
        key, _, value = line.partition(" ")
        values.setdefault(key, value)
        if key == "identityfile":
            keys.append(Path(value.replace("~", str(home), 1)))
    key_file = next(k for k in keys if k.exists())
    block = [
        f"Host {SSHPYK_ALIAS}",
        f"  HostName {values['hostname']}",
        f"  Port {values['port']}",
        f"  User {values['user']}",
        f"  IdentityFile {key_file}",
        f"  UserKnownHostsFile {values['userknownhostsfile']}",
    ]
    if "hostkeyalias" in values:
        block.append(f"  HostKeyAlias {values['hostkeyalias']}")
    block += [
        "  BatchMode yes",
        "  ControlMaster auto",
        "  ControlPath ~/.ssh/sshpyk_%r@%h_%p",
        "  ControlPersist 10m",
        "",
    ]
    config = home / ".ssh" / "config"
    config.write_text("\n".join(block) + "\n" + config.read_text())


def _clients(lab: netlab.Lab) -> dict[str, list]:
    return {
        "nbremote": [str(netlab.LAB_PYTHON), "-c", CLIENT, f"nbremote-{netlab.SERVER_HOST_ALIAS}"],
        "sshpyk": [str(SSHPYK_VENV / "bin" / "python"), "-c", CLIENT, SSHPYK_KERNEL],
    }


def trial(lab: netlab.Lab, tool: str) -> list[dict]:
    lab.cleanup_between_tests()  # no master, no kernel, ~/.ssh as built
    _sshpyk_alias(lab)
    # The cleanup removes Jupyter's runtime dir, which a user's laptop has (sshpyk writes there
    # before anything creates it).
    runtime = lab.user(netlab.LAPTOP_USER).home / ".local" / "share" / "jupyter" / "runtime"
    lab.laptop_exec(["mkdir", "-p", "-m", "0700", str(runtime)])
    done = lab.laptop_exec(_clients(lab)[tool], env=lab.nbremote_env(), timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{tool}: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtts", default="0,100")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "kernels.json"))
    args = parser.parse_args()
    if not (SSHPYK_VENV / "bin" / "sshpyk").exists():
        sys.exit(f"{SSHPYK_VENV} has no sshpyk: see this script's docstring")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        lab = netlab.Lab.build(Path(work))
        try:
            installed = lab.nbremote("kernels", "install", netlab.SERVER_HOST_ALIAS, timeout=120)
            assert installed.returncode == 0, installed.stderr
            _sshpyk_alias(lab)
            added = lab.laptop_exec(
                [
                    str(SSHPYK_VENV / "bin" / "sshpyk"),
                    "add",
                    "--ssh-host-alias",
                    SSHPYK_ALIAS,
                    "--kernel-name",
                    SSHPYK_KERNEL,
                    "--display-name",
                    "Python on server (sshpyk)",
                    "--language",
                    "python",
                    "--remote-python",
                    str(netlab.LAB_PYTHON),
                    "--remote-kernel-name",
                    "python3",
                    "--replace",
                ],
                timeout=120,
            )
            assert added.returncode == 0, added.stdout + added.stderr
            for rtt in [float(r) for r in args.rtts.split(",")]:
                lab.replace_link(functools.partial(DelayLink.start, delay_ms=rtt / 2))
                samples: dict[str, list] = {"nbremote": [], "sshpyk": []}
                for _ in range(args.reps):
                    for tool in samples:  # interleaved, so both see the same machine load
                        samples[tool].append(trial(lab, tool))
                for tool, runs in samples.items():
                    row = {"rtt_ms": rtt, "tool": tool, "samples": runs}
                    for i, kind in enumerate(("cold", "warm")):
                        for what in ("start", "first_execute"):
                            row[f"{kind}_{what}"] = statistics.median(r[i][what] for r in runs)
                        row[f"{kind}_total"] = statistics.median(r[i]["start"] + r[i]["first_execute"] for r in runs)
                    rows.append(row)
                    print(
                        f"rtt {rtt:g} ms {tool:9s} cold: start {row['cold_start']:.2f} s + execute "
                        f"{row['cold_first_execute']:.3f} s = {row['cold_total']:.2f} s; warm: start "
                        f"{row['warm_start']:.2f} s + execute {row['warm_first_execute']:.3f} s = "
                        f"{row['warm_total']:.2f} s",
                        flush=True,
                    )
        finally:
            lab.teardown()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
