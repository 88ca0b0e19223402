"""A single-node Slurm cluster in the lab's server namespace: login and compute node at once.

    cluster = SlurmCluster.start(lab)    # munged, slurmctld, slurmd (Debian's packages)
    cluster.squeue()                     # the job ids Slurm still lists
    cluster.restart_controller()         # slurmctld stopped and started, its jobs kept
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

    cluster = SlurmCluster.start(lab, node_host=True)

makes the compute node a machine of its own, as on a cluster whose users may ssh
to the node running their job: a network namespace joined to the login node (the
server's) by a veth (NODE_ADDR, Slurm's NodeAddr), where slurmd runs, and a mount
namespace of its own whose /etc/pam.d/sshd ends its account stack with
`pam_slurm_adopt.so` (Debian's libpam-slurm-adopt) and whose /etc/ssh is its own:
its sshd (sshd_config there, own ed25519 host key at /etc/ssh/ssh_host_ed25519_key,
node_host_key()) listens on NODE_ADDR:22, as a real node's would, so a job there
reads the node's host key where it reads it on a cluster. PrologFlags=contain gives
each job the extern step pam_slurm_adopt adopts a login into.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import socket
import time
from pathlib import Path

from netlab import LabError, LabUnavailable, _kill_until_gone, _netns_pids, _run


NODE = "node1"
PARTITION = "debug"
DAEMONS = ("slurmctld", "slurmd", "munged")
# The node host's link: a /30 inside the lab's blackholed 192.168.77.0/24, clear of homenet's /25.
LOGIN_SIDE, NODE_ADDR = "192.168.77.253", "192.168.77.254"
PAM_ADOPT = "/lib/security/pam_slurm_adopt.so"


def slurm_conf(state: Path, control_host: str, node_host: bool = False) -> str:
    control_addr, node_addr = (LOGIN_SIDE, NODE_ADDR) if node_host else ("127.0.0.1", "127.0.0.1")
    return f"""\
ClusterName=nbrlab
SlurmctldHost={control_host}({control_addr})
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
{"PrologFlags=contain" if node_host else ""}
NodeName={NODE} NodeAddr={node_addr} CPUs=2 RealMemory=2000 Gres=gpu:a100:1 State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""


GRES_CONF = f"AutoDetect=off\nNodeName={NODE} Name=gpu Type=a100 File=/dev/null\n"


class SlurmCluster:
    def __init__(self, lab, root: Path, node_host: bool = False):
        self.lab = lab
        self.root = root
        self.state = lab.server_run / "slurm"  # /run/slurm on the server
        self.mounted = False
        self.node_host = node_host
        self.node_ns = f"nbr-node-{lab.server_ns.split('-', 2)[2]}"
        self.node_mnt = root / "node.mnt"
        self.node_etc_ssh = root / "node-etc-ssh"  # the node's /etc/ssh

    @classmethod
    def start(cls, lab, node_host: bool = False) -> "SlurmCluster":
        needed = ["/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged", "/usr/bin/sbatch"]
        needed += [PAM_ADOPT] if node_host else []
        missing = [p for p in needed if not os.path.exists(p)]
        if missing:
            raise LabUnavailable(
                f"Slurm is not installed ({', '.join(missing)} missing): "
                "apt-get install slurm-wlm munge libpam-slurm-adopt"
            )
        root = lab.workdir / "slurm"
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(lab.server_run / "slurm", ignore_errors=True)
        cluster = cls(lab, root, node_host)
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
        (etc_slurm / "slurm.conf").write_text(
            slurm_conf(Path("/run/slurm"), socket.gethostname().split(".")[0], self.node_host)
        )
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
        if self.node_host:
            self._start_node_host()
            self._node(["/usr/sbin/slurmd", "-N", NODE])
        else:
            self._root(["/usr/sbin/slurmd", "-N", NODE])
        self._wait(self._node_idle, f"node {NODE} to be idle", seconds=30)
        if self.node_host:
            self._node(["/usr/sbin/sshd", "-E", "/run/slurm/node-sshd.log"])
            self._wait(lambda: (self.state / "node-sshd.pid").exists(), "the node's sshd")

    # --- the node as a host of its own -----------------------------------------

    def _node_prefix(self) -> list[str]:
        return ["nsenter", f"--mount={self.node_mnt}", f"--net=/run/netns/{self.node_ns}", "--"]

    def node_exec(self, argv: list[str], user: str | None = None, timeout: float = 30):
        """argv on the compute node (its network and mount namespaces), as root or as user."""
        as_user = []
        if user is not None:
            u = pwd.getpwnam(user)
            as_user = ["setpriv", f"--reuid={u.pw_uid}", f"--regid={u.pw_gid}", "--init-groups", "--"]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        return _run([*self._node_prefix(), *as_user, *argv], check=False, timeout=timeout, env=env)

    def _node(self, argv: list[str]) -> None:
        done = self.node_exec(argv)
        if done.returncode != 0:
            raise LabError(
                f"`{shlex.join(argv)}` on the node exited {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()}\n{self.logs()}"
            )

    def _start_node_host(self) -> None:
        ns, veth = self.node_ns, f"nd{self.node_ns.split('-', 2)[2]}"[:15]
        _run(["ip", "netns", "add", ns])
        _run(["ip", "link", "add", veth, "netns", self.lab.server_ns, "type", "veth", "peer", "eth0", "netns", ns])
        for where, dev, addr in ((self.lab.server_ns, veth, LOGIN_SIDE), (ns, "eth0", NODE_ADDR)):
            _run(["ip", "-n", where, "addr", "add", f"{addr}/30", "dev", dev])
            _run(["ip", "-n", where, "link", "set", dev, "up"])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "-n", ns, "route", "add", "default", "via", LOGIN_SIDE])
        # The node's own files: its PAM stack (pam_slurm_adopt last in account) and its sshd's.
        pam = self.root / "node-pam.d"
        shutil.copytree("/etc/pam.d", pam)
        (pam / "sshd").write_text(
            (pam / "sshd").read_text()
            + f"account required pam_slurm_adopt.so nodename={NODE} action_adopt_failure=allow\n"
        )
        etc_ssh = self.node_etc_ssh
        etc_ssh.mkdir(mode=0o755)
        os.chmod(etc_ssh, 0o755)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(etc_ssh / "ssh_host_ed25519_key")])
        (etc_ssh / "sshd_config").write_text(
            f"ListenAddress {NODE_ADDR}\nPort 22\nHostKey /etc/ssh/ssh_host_ed25519_key\nUsePAM yes\n"
            "KbdInteractiveAuthentication no\nPasswordAuthentication no\nPidFile /run/slurm/node-sshd.pid\n"
            "AllowTcpForwarding yes\nSubsystem sftp internal-sftp\n"
        )
        # The node's mount namespace: the server's view (its /run, Slurm's and munge's /etc, so the
        # home folders, the spool and the stepd sockets are shared as on a cluster) with its own PAM.
        self.node_mnt.touch()
        _run(["unshare", f"--mount={self.node_mnt}", "--propagation", "private", "true"])
        binds = ((self.lab.server_run, "/run"), (self.root / "etc-slurm", "/etc/slurm"))
        binds += ((self.root / "etc-munge", "/etc/munge"), (pam, "/etc/pam.d"), (etc_ssh, "/etc/ssh"))
        script = "umount -R /run/netns 2>/dev/null; " + " && ".join(
            f"mount --bind {shlex.quote(str(src))} {dst}" for src, dst in binds
        )
        _run(["nsenter", f"--mount={self.node_mnt}", "--", "sh", "-c", script])

    def node_host_key(self) -> str:
        """The node's public host key, as a known_hosts line would hold it after the host name."""
        return " ".join((self.node_etc_ssh / "ssh_host_ed25519_key.pub").read_text().split()[:2])

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

    def _terminate(self, pidfile: str) -> None:
        """SIGTERM to the daemon whose pid is in the server's /run/PIDFILE, and up to 10 s for it to end."""
        path = self.lab.server_run / pidfile
        try:
            pid = int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            os.kill(pid, 15)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] in "ZX":
                        break
            except OSError:
                break
            time.sleep(0.05)

    def restart_controller(self) -> None:
        """Stop slurmctld (SIGTERM: it saves its state) and start it again, as an admin's restart
        does: the jobs run on under slurmd and the new slurmctld takes them back from its state.
        Its checks of time limits then come 30, 60, 90… s after this call."""
        self._terminate("slurmctld.pid")
        self._root(["/usr/sbin/slurmctld"])
        self._wait(lambda: self.lab.server_exec(["squeue", "-h"]).returncode == 0, "slurmctld to answer again")

    def stop(self) -> None:
        for pidfile in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
            self._terminate(pidfile)
        if self.node_host:
            _kill_until_gone(lambda: _netns_pids(self.node_ns), f"processes in {self.node_ns}")
            _run(["umount", str(self.node_mnt)], check=False)
            _run(["ip", "netns", "del", self.node_ns], check=False)
        if self.mounted:
            self.lab.server_exec(["sh", "-c", "umount /etc/slurm; umount /etc/munge"])
            self.mounted = False
