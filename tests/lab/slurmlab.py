"""A single-node Slurm cluster in the lab's server namespace: login and compute node at once.

    cluster = SlurmCluster.start(lab)    # munged, slurmctld, slurmd (Debian's packages)
    cluster.squeue()                     # the job ids Slurm still lists
    cluster.cancel_all()                 # between tests
    cluster.stop()

Everything lives in the server's own mount namespace, where /etc/slurm and
/etc/munge are bind mounts of private copies and /run is already private: so
sbatch, squeue and the daemons find their config and the munge socket at the
default places, exactly as on a real cluster, and this machine's /etc is never
touched. The daemons are started with `nsenter` (netlab's server prefix), not
`ip netns exec`, which would remount /sys and hide the cgroup tree slurmd needs.

The node has a fake GPU: gres.conf points gpu:a100 at /dev/null, so
`--gres=gpu:1` is accepted, sets CUDA_VISIBLE_DEVICES, and a second GPU job
waits for the first; `--gres=gpu:2` is refused at submission.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import socket
import time
from pathlib import Path

from netlab import LabError, LabUnavailable

NODE = "node1"
PARTITION = "debug"
DAEMONS = ("slurmctld", "slurmd", "munged")


def slurm_conf(state: Path, control_host: str) -> str:
    return f"""\
ClusterName=nbrlab
SlurmctldHost={control_host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/spool
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MailProg=/bin/true
GresTypes=gpu
ReturnToService=2
KillWait=2
MinJobAge=300
InactiveLimit=0
NodeName={NODE} NodeAddr=127.0.0.1 CPUs=2 RealMemory=2000 Gres=gpu:a100:1 State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""


GRES_CONF = f"AutoDetect=off\nNodeName={NODE} Name=gpu Type=a100 File=/dev/null\n"


class SlurmCluster:
    def __init__(self, lab, root: Path):
        self.lab = lab
        self.root = root
        self.state = lab.server_run / "slurm"  # /run/slurm on the server
        self.mounted = False

    @classmethod
    def start(cls, lab) -> "SlurmCluster":
        missing = [
            p
            for p in ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged", "/usr/bin/sbatch")
            if not os.path.exists(p)
        ]
        if missing:
            raise LabUnavailable(
                f"Slurm is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge"
            )
        root = lab.workdir / "slurm"
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(lab.server_run / "slurm", ignore_errors=True)
        cluster = cls(lab, root)
        try:
            cluster._start()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _root(self, argv: list[str], timeout: float = 30, check: bool = True):
        done = self.lab.server_exec(argv, timeout=timeout)
        if check and done.returncode != 0:
            raise LabError(
                f"`{shlex.join(argv)}` on the server exited {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()}\n{self.logs()}"
            )
        return done

    def _start(self) -> None:
        munge = pwd.getpwnam("munge")
        # The daemons' files go in the server's private /run: the lab's workdir is not
        # traversable by munge or by the job's user, who runs the script slurmd spools.
        etc_slurm, etc_munge, state = self.root / "etc-slurm", self.root / "etc-munge", self.state
        for d in (etc_slurm, etc_munge, state / "ctld", state / "spool"):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(state, 0o755)
        (etc_slurm / "slurm.conf").write_text(slurm_conf(Path("/run/slurm"), socket.gethostname().split(".")[0]))
        (etc_slurm / "gres.conf").write_text(GRES_CONF)
        for f in etc_slurm.iterdir():
            os.chmod(f, 0o644)
        key = etc_munge / "munge.key"
        key.write_bytes(os.urandom(128))
        for path, mode in ((etc_munge, 0o700), (key, 0o400)):
            os.chown(path, munge.pw_uid, munge.pw_gid)
            os.chmod(path, mode)
        munge_run = self.lab.server_run / "munge"
        munge_run.mkdir(exist_ok=True)
        os.chown(munge_run, munge.pw_uid, munge.pw_gid)
        os.chmod(munge_run, 0o755)
        self._root(
            [
                "sh",
                "-c",
                f"mount --bind {shlex.quote(str(etc_slurm))} /etc/slurm && "
                f"mount --bind {shlex.quote(str(etc_munge))} /etc/munge",
            ]
        )
        self.mounted = True
        self._root(
            [
                "setpriv",
                f"--reuid={munge.pw_uid}",
                f"--regid={munge.pw_gid}",
                "--clear-groups",
                "/usr/sbin/munged",
                "--log-file=/run/munge/munged.log",
                "--seed-file=/run/munge/munged.seed",
            ]
        )
        self._wait(lambda: (self.lab.server_run / "munge" / "munge.socket.2").exists(), "munged's socket")
        self._root(["/usr/sbin/slurmctld"])
        self._root(["/usr/sbin/slurmd", "-N", NODE])
        self._wait(self._node_idle, f"node {NODE} to be idle", seconds=30)

    def _node_idle(self) -> bool:
        done = self.lab.server_exec(["sinfo", "-h", "-n", NODE, "-o", "%t"])
        return done.returncode == 0 and done.stdout.strip() == "idle"

    def _wait(self, predicate, what: str, seconds: float = 15) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.1)
        raise LabError(f"waited {seconds} s for {what}\n{self.logs()}")

    def logs(self, lines: int = 15) -> str:
        out = []
        for path in (
            self.state / "slurmctld.log",
            self.state / "slurmd.log",
            self.lab.server_run / "munge" / "munged.log",
        ):
            try:
                tail = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            out.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(out)

    def squeue(self) -> list[str]:
        """Job ids Slurm lists as pending, running or completing."""
        done = self._root(["squeue", "-h", "-o", "%i"])
        return done.stdout.split()

    def job_field(self, job_id: str, key: str) -> str | None:
        done = self.lab.server_exec(["scontrol", "show", "job", "-o", job_id])
        for word in done.stdout.split():
            if word.startswith(key + "="):
                return word.split("=", 1)[1]
        return None

    def wait_empty(self, seconds: float = 30) -> None:
        self._wait(lambda: not self.squeue(), "squeue to be empty", seconds)

    def cancel_all(self) -> None:
        if self.squeue():
            self._root(["scancel", "--full", "--partition", PARTITION])
            self.wait_empty()

    def stop(self) -> None:
        for pidfile in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
            path = self.lab.server_run / pidfile
            try:
                pid = int(path.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        if f.read().rsplit(")", 1)[1].split()[0] in "ZX":
                            break
                except OSError:
                    break
                time.sleep(0.05)
        if self.mounted:
            self.lab.server_exec(["sh", "-c", "umount /etc/slurm; umount /etc/munge"])
            self.mounted = False
