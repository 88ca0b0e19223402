"""The relay's cost: cold and warm `up` through `server relay` against direct, at several RTTs.

    sudo /opt/nbremote-lab/venv/bin/python bench/relay_bench.py [--reps 5] [--rtts 0,20,100]

Builds one Lab (tests/lab/netlab.py) with a DelayLink (tests/lab/delaylink.py)
between laptop and server holding every packet rtt/2 each way. The relay is
Debian's sshd with a config of its own on the server's side of that link
(192.168.77.2:2200, in the server's network namespace, bob's account), so the
laptop's hop to it crosses the delay as a login to a distant VPS would, and
the box's tunnel to it does not (a relay near the box). Alice's
`server relay` keeps the tunnel. Two profiles, from invites:

  direct    nbr1:alice@192.168.77.2:22#FP
  relay     nbr1:alice@127.0.0.1:1#FP,relay=bob@192.168.77.2:2200,tunnel=2222
            (127.0.0.1:1 is refused at once on the laptop, so the race goes to the relay without a stagger)

Jupyter runs already (one `up` before measuring). Each rep, interleaved:
cold = the laptop's ssh masters ended (by pid), then `nbremote up NAME
--no-browser --detach` timed from start to exit; warm = the same again with
the master left alive. Target: relay cold <= direct cold + one login to the relay,
measured in each rep as `ssh -o ControlMaster=no -p 2200 bob@192.168.77.2 true` from
the laptop through the same link (timed inside the laptop's namespace, as ssh alone).

Then, at each RTT, the return after a relay restart: the relay's sshd and its
sessions killed (the box's tunnel with them), the laptop's masters ended,
sshd started again; from the moment it listens, `up relay` is run again and
again until it succeeds. Reported: seconds from the relay's return to the
successful `up`'s exit, and how many `up`s failed before. Target: 2 s + one login.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "lab"))

import delaylink  # noqa: E402
import netlab  # noqa: E402

RELAY_PORT, TUNNEL = 2200, 2222
RELAY_CONF = """Port {port}
ListenAddress {addr}
HostKey {dir}/ssh_host_ed25519_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile {keys}/%u
StrictModes no
UsePAM yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowUsers {user}
"""


def nbremote(lab, *args: str) -> subprocess.CompletedProcess:
    done = lab.nbremote(*args, timeout=180)
    if done.returncode != 0:
        keepers = lab.user(netlab.LAPTOP_USER).home / ".local" / "state" / "nbremote" / "keeper.log"
        tail = keepers.read_text().splitlines()[-20:] if keepers.exists() else []
        raise RuntimeError(f"nbremote {' '.join(args)} failed: {done.stderr}\nkeeper.log:\n" + "\n".join(tail))
    return done


def launch_relay_sshd(lab, workdir: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            "nsenter",
            f"--net=/run/netns/{lab.server_ns}",
            "--",
            "/usr/sbin/sshd",
            "-D",
            "-f",
            str(workdir / "sshd_config"),
            "-E",
            str(workdir / "sshd.log"),
        ],
        start_new_session=True,
    )
    while f"{netlab.SERVER_ADDR}:{RELAY_PORT}" not in lab.server_exec(["ss", "-Htln"]).stdout:
        time.sleep(0.02)
    return proc


def kill_relay_sshd(proc: subprocess.Popen) -> None:
    """The relay's sshd and the sessions it forked (the tunnel's among them), as a restart does."""
    children = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == proc.pid:
                children.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    for pid in [proc.pid, *children]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(10)


def recovery(lab, workdir: Path, relay_sshd: subprocess.Popen) -> tuple[subprocess.Popen, float, int]:
    kill_relay_sshd(relay_sshd)
    end_masters(lab)
    time.sleep(1)
    relay_sshd = launch_relay_sshd(lab, workdir)
    back = time.monotonic()
    failed = 0
    while True:
        done = lab.nbremote("up", "relay", "--no-browser", "--detach", timeout=180)
        if done.returncode == 0:
            return relay_sshd, time.monotonic() - back, failed
        failed += 1
        if time.monotonic() - back > 60:
            raise RuntimeError(done.stderr + (workdir / "relay.log").read_text())


def start_relay_sshd(lab, workdir: Path) -> subprocess.Popen:
    keys = Path(tempfile.mkdtemp(prefix="nbr-relaykeys-"))
    os.chmod(keys, 0o755)
    alice_key = lab.user(netlab.ALICE).home / ".ssh" / "id_ed25519"
    done = lab.server_exec(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(alice_key)], user=netlab.ALICE)
    assert done.returncode == 0, done.stderr
    laptop_pub = (lab.user(netlab.LAPTOP_USER).home / ".ssh" / "id_ed25519.pub").read_text()
    (keys / netlab.BOB).write_text(Path(f"{alice_key}.pub").read_text() + laptop_pub)
    os.chmod(keys / netlab.BOB, 0o644)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(workdir / "ssh_host_ed25519_key")], check=True
    )
    (workdir / "sshd_config").write_text(
        RELAY_CONF.format(port=RELAY_PORT, addr=netlab.SERVER_ADDR, dir=workdir, keys=keys, user=netlab.BOB)
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    return launch_relay_sshd(lab, workdir)


def start_tunnel(lab, workdir: Path) -> subprocess.Popen:
    proc = lab.server_popen(
        [
            str(netlab.LAB_PYTHON),
            "-m",
            "nbremote",
            "server",
            "relay",
            f"{netlab.BOB}@{netlab.SERVER_ADDR}:{RELAY_PORT}",
            "--tunnel-port",
            str(TUNNEL),
            "--port",
            "22",
        ],
        user=netlab.ALICE,
        env=lab.nbremote_env(),
        stdout=(workdir / "relay.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while f"127.0.0.1:{TUNNEL}" not in lab.server_exec(["ss", "-Htln"]).stdout:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError((workdir / "relay.log").read_text())
        time.sleep(0.1)
    return proc


def end_masters(lab) -> None:
    """The laptop's ssh masters, ended by pid: the next `up` logs in again."""
    done = lab.laptop_exec(["pgrep", "-u", netlab.LAPTOP_USER, "-x", "ssh"])
    for pid in [int(p) for p in done.stdout.split()]:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while lab.laptop_exec(["pgrep", "-u", netlab.LAPTOP_USER, "-x", "ssh"]).stdout.strip():
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)


def timed_up(lab, name: str, cold: bool) -> float:
    for _ in range(3):
        if cold:
            end_masters(lab)
        started = time.monotonic()
        done = nbremote(lab, "up", name, "--no-browser", "--detach")
        elapsed = time.monotonic() - started
        if not cold:  # a warm `up` reuses the master and names no path
            return elapsed
        if ("via relay" if name == "relay" else "via LAN") in done.stderr:
            return elapsed
        # A master outlived end_masters (seen once at 20 ms): not a cold start, so not a sample.
    raise RuntimeError(f"no cold `up {name}` in 3 tries: {done.stderr}")


LOGIN_TIMER = (
    "import subprocess, sys, time\n"
    "began = time.monotonic()\n"
    "done = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, capture_output=True, text=True)\n"
    "print(time.monotonic() - began)\n"
    "if done.returncode:\n"
    "    sys.exit(done.stderr)\n"
)


def relay_login(lab, workdir: Path) -> float:
    """One login to the relay from the laptop, through the same delayed link, nothing shared:
    `ssh -o ControlMaster=no relay true`, timed inside the laptop's namespace."""
    argv = ["ssh", "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "BatchMode=yes"]
    argv += ["-o", "StrictHostKeyChecking=accept-new", "-o", f"UserKnownHostsFile={workdir / 'relay_known_hosts'}"]
    argv += ["-p", str(RELAY_PORT), "-l", netlab.BOB, "--", netlab.SERVER_ADDR, "true"]
    done = lab.laptop_exec([str(netlab.LAB_PYTHON), "-c", LOGIN_TIMER, *argv])
    if done.returncode != 0:
        raise RuntimeError(f"login to the relay failed: {done.stderr}")
    return float(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rtts", default="0,20,100")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="nbr-relay-bench-"))
    lab = netlab.Lab.build(workdir / "lab", link_factory=functools.partial(delaylink.DelayLink.start, delay_ms=0))
    relay_sshd = tunnel = None
    results = []
    try:
        relay_sshd = start_relay_sshd(lab, workdir)
        tunnel = start_tunnel(lab, workdir)
        fingerprint = subprocess.run(
            ["ssh-keygen", "-l", "-f", str(lab.server_etc_ssh / "ssh_host_ed25519_key.pub")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()[1]
        invites = {
            "direct": f"nbr1:{netlab.ALICE}@{netlab.SERVER_ADDR}:22#{fingerprint}",
            "relay": f"nbr1:{netlab.ALICE}@127.0.0.1:1#{fingerprint},relay={netlab.BOB}@{netlab.SERVER_ADDR}:"
            f"{RELAY_PORT},tunnel={TUNNEL}",
        }
        for name, line in invites.items():
            nbremote(lab, "add", name, "--invite", line, "--timeout", "2")
        for rtt in [float(r) for r in args.rtts.split(",")]:
            end_masters(lab)
            lab.replace_link(functools.partial(delaylink.DelayLink.start, delay_ms=rtt / 2))
            # A new link takes the relay's address away for a moment, and the box's tunnel with it
            # (seen at 100 ms: a login through it, then the master gone): measure once it is rebuilt.
            settle = time.monotonic() + 60
            while lab.nbremote("up", "relay", "--no-browser", "--detach", timeout=180).returncode != 0:
                if time.monotonic() > settle:
                    raise RuntimeError((workdir / "relay.log").read_text())
                time.sleep(1)
            timed_up(lab, "direct", cold=True)  # Jupyter's first start is not what is measured
            relay_login(lab, workdir)  # the relay's host key recorded: every sample checks it alike
            samples: dict[str, list[float]] = {f"{n}_{m}": [] for n in invites for m in ("cold", "warm")}
            samples["relay_login"] = []
            for _ in range(args.reps):
                for name in invites:
                    samples[f"{name}_cold"].append(timed_up(lab, name, cold=True))
                    samples[f"{name}_warm"].append(timed_up(lab, name, cold=False))
                samples["relay_login"].append(relay_login(lab, workdir))
            row: dict = {"rtt_ms": rtt}
            for key, values in samples.items():
                row[key] = round(statistics.median(values), 3)
                row[key + "_all"] = [round(v, 3) for v in values]
            row["relay_cold_extra_s"] = round(row["relay_cold"] - row["direct_cold"], 3)
            row["relay_warm_extra_s"] = round(row["relay_warm"] - row["direct_warm"], 3)
            # The target: cold through the relay within direct cold plus one login to the relay.
            row["target_cold_s"] = round(row["direct_cold"] + row["relay_login"], 3)
            row["cold_within_target"] = row["relay_cold"] <= row["target_cold_s"]
            relay_sshd, row["return_after_restart_s"], row["failed_ups_before"] = recovery(lab, workdir, relay_sshd)
            results.append(row)
            print(json.dumps(row), flush=True)
    finally:
        if tunnel is not None and tunnel.poll() is None:
            os.killpg(tunnel.pid, signal.SIGTERM)
            tunnel.wait(10)
        if relay_sshd is not None and relay_sshd.poll() is None:
            kill_relay_sshd(relay_sshd)
        lab.teardown()
    print(json.dumps({"results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
