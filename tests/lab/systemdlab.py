"""A real systemd (Debian's 252) booted in a container that cannot touch this machine.

    box = SystemdBox.boot(workdir, netns="nbr-srv-…")   # PID 1 of its own, in that network namespace
    box.exec(["systemctl", "is-active", "x.timer"])      # a command inside, as root
    box.upper                                            # every file the container wrote
    box.teardown()

PID 1 here is not systemd, and booting systemd with this machine's root shared
once wiped /tmp and started udevd and logind here. So the container's root is
an overlay: its lower layer a read-only bind of this machine's root file system
(no submounts: not /proc, /sys, /dev or /run/netns), its upper layer a tmpfs in
the test's folder, so every write (units, /var, whiteouts) lands there and goes
with it. systemd-nspawn gives it its own PID, mount, UTS and IPC namespaces and
its own /tmp, /run and /dev; `--network-namespace-path` puts it in a lab
namespace, never the root one. It all runs in a private mount namespace
(`unshare --mount`) where a tmpfs hides /run/systemd, on disk here, from
nspawn's own bookkeeping. The host's cgroup trees get one folder of ours,
removed at teardown. Units nbremote does not need are masked in the upper
layer (everything the host enables, udev, logind, tmpfiles, networking), and it
boots to basic.target: ready in about 0.3 s.

nbremote is installed in the container as pipx would: /usr/local/bin/nbremote
runs the lab's copy of src (copied into the upper layer: nspawn's /tmp hides
the lab's own).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from netlab import LAB_PYTHON, LabError

NSPAWN = "/usr/bin/systemd-nspawn"
SRC_IN_BOX = "/usr/local/lib/nbremote"
CGROUP_TREES = [Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")]
# Host daemons and sysinit units that touch what the lab must keep (udev, logind, tmpfiles,
# the network's configuration) or only slow the boot; the rest of /etc's wants are masked too.
MASKED = [
    "systemd-udevd.service",
    "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket",
    "systemd-udev-trigger.service",
    "systemd-logind.service",
    "systemd-tmpfiles-setup.service",
    "systemd-tmpfiles-setup-dev.service",
    "systemd-tmpfiles-clean.timer",
    "systemd-timesyncd.service",
    "systemd-networkd.service",
    "systemd-resolved.service",
    "networking.service",
    "ifupdown-wait-online.service",
    "getty.target",
    "console-getty.service",
    "cron.service",
]
LAUNCHER = f"""#!{LAB_PYTHON}
import sys
sys.path.insert(0, "{SRC_IN_BOX}")
from nbremote.entry import main
sys.exit(main())
"""
BOOT = r"""set -eu
work=$1; netns=$2; name=$3
mount -t tmpfs -o mode=0755 nbr-systemd-upper "$work/layer"
mkdir "$work/layer/upper" "$work/layer/work"
mount --bind / "$work/lower"
mount -o remount,bind,ro "$work/lower"
mount -t tmpfs -o mode=0755 nbr-systemd-run /run/systemd
"$work/prepare" "$work/layer/upper"
mount -t overlay nbr-systemd-root \
    -o "lowerdir=$work/lower,upperdir=$work/layer/upper,workdir=$work/layer/work" "$work/root"
for tree in $CGROUPS; do echo $$ > "$tree/cgroup.procs"; done
exec {nspawn} -D "$work/root" -b --register=no --keep-unit -M "$name" \
    --network-namespace-path="/run/netns/$netns" --console=pipe -- systemd.unit=basic.target
"""


def cgroup_trees() -> list[Path]:
    """This machine's writable cgroup hierarchies nspawn uses (hybrid here: name=systemd and unified)."""
    found = [t for t in CGROUP_TREES[:2] if (t / "cgroup.procs").exists()]
    return found or [CGROUP_TREES[2]]


def host_systemd_processes() -> dict[int, str]:
    """pid: name of each systemd-ish process in this machine's PID namespace."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            name = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if name.startswith("systemd") or name in ("udevd", "dbus-daemon"):
            found[int(entry.name)] = name
    return found


class SystemdBox:
    def __init__(self, workdir: Path, netns: str, name: str) -> None:
        self.workdir, self.netns, self.name = workdir, netns, name
        self.cgroups = [tree / f"nbr-systemdlab-{name}" for tree in cgroup_trees()]
        self.proc: subprocess.Popen | None = None
        self.leader: int | None = None
        self.log = workdir / "boot.log"
        self._sentinel = Path(f"/tmp/.nbr-systemdlab-{name}")  # must outlive the boot: /tmp untouched

    @property
    def upper(self) -> Path:
        """The upper layer as this machine sees it (inside the private mount namespace only)."""
        return Path(f"/proc/{self.proc.pid}/root") / self.workdir.relative_to("/") / "layer" / "upper"

    @classmethod
    def boot(cls, workdir: Path, *, netns: str, name: str, src: Path, files: dict[str, tuple[str, int]]) -> SystemdBox:
        """files: {path in the box: (text, mode)}, written to the upper layer before boot."""
        if not Path(NSPAWN).exists():
            raise LabError(f"{NSPAWN} is missing: apt-get install systemd-container")
        box = cls(workdir, netns, name)
        for folder in ("layer", "lower", "root"):
            (workdir / folder).mkdir(parents=True)
        shutil.copytree(src, workdir / "src")
        box._write_prepare(files)
        box._sentinel.write_text("the container must not see or change this\n")
        before = host_systemd_processes()
        for cgroup in box.cgroups:
            cgroup.mkdir()
        box.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", BOOT.format(nspawn=NSPAWN)]
            + ["boot", str(workdir), netns, name],
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CGROUPS": " ".join(str(c) for c in box.cgroups)},
            stdin=subprocess.DEVNULL,
            stdout=box.log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            box.leader = box._wait_for_leader()
            done = box.exec(["systemctl", "is-system-running", "--wait"], timeout=30)
            if done.stdout.strip() not in ("running", "degraded"):
                raise LabError(f"systemd in the box: {done.stdout}{done.stderr}{box.log.read_text()}")
            box.check_host(before)
        except BaseException:
            box.teardown()
            raise
        return box

    def _write_prepare(self, files: dict[str, tuple[str, int]]) -> None:
        """A script run in the private mount namespace that fills the upper layer before boot."""
        lines = ["#!/bin/sh", "set -eu", "u=$1", 'mkdir -p "$u/etc/systemd/system" "$u/usr/local/bin"']
        wants = sorted({p.name for p in Path("/etc/systemd/system").glob("*.wants/*")})
        for unit in sorted(set(MASKED) | set(wants)):
            lines.append(f'ln -s /dev/null "$u/etc/systemd/system/{unit}"')
        lines.append(f'mkdir -p "$u{Path(SRC_IN_BOX).parent}" && cp -r {self.workdir / "src"} "$u{SRC_IN_BOX}"')
        files = {**files, "/usr/local/bin/nbremote": (LAUNCHER, 0o755)}
        for number, (path, (text, mode)) in enumerate(sorted(files.items())):
            staged = self.workdir / f"file{number}"
            staged.write_text(text)
            lines.append(f'mkdir -p "$u{Path(path).parent}" && cp {staged} "$u{path}" && chmod {mode:o} "$u{path}"')
        prepare = self.workdir / "prepare"
        prepare.write_text("\n".join(lines) + "\n")
        prepare.chmod(0o700)

    def _wait_for_leader(self) -> int:
        """The container's PID 1, as this machine numbers it: nspawn's child running systemd."""
        assert self.proc is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LabError(f"systemd-nspawn exited {self.proc.returncode}: {self.log.read_text()}")
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if stat.rsplit(")", 1)[1].split()[1] == str(self.proc.pid) and "(systemd)" in stat:
                    if Path(f"/proc/{entry.name}/root/run/systemd/private").exists():
                        return int(entry.name)
            time.sleep(0.02)
        raise LabError(f"no systemd in the box after 20 s: {self.log.read_text()}")

    def check_host(self, before: dict[int, str]) -> None:
        """The DANGER line of the project's brief, checked: no systemd, udevd or logind of the
        container's appeared outside it, this machine's /tmp kept its file, /run has no systemd."""
        assert self.leader is not None and self.proc is not None
        ours = self._descendants(self.proc.pid) | {self.proc.pid}
        strays = {p: n for p, n in host_systemd_processes().items() if p not in before and p not in ours}
        if strays:
            raise LabError(f"systemd processes outside the box: {strays}")
        if not self._sentinel.exists():
            raise LabError(f"{self._sentinel} is gone: something cleaned this machine's /tmp")
        if Path("/run/systemd/system").exists():
            raise LabError("/run/systemd/system appeared on this machine")

    @staticmethod
    def _descendants(pid: int) -> set[int]:
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
        found, todo = set(), [pid]
        while todo:
            for child in children.get(todo.pop(), []):
                found.add(child)
                todo.append(child)
        return found

    def exec(self, argv: list[str], *, timeout: float = 60) -> subprocess.CompletedProcess:
        """argv inside the box as root (nsenter into every namespace of its PID 1), with a clean environment."""
        assert self.leader is not None
        return subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "--", *argv],
            env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def teardown(self) -> None:
        """Halt the box (SIGTERM to nspawn asks it to), then remove what it had here."""
        ours = set() if self.leader is None else self._descendants(self.leader) | {self.leader}
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for cgroup in self.cgroups:
            for folder in (
                sorted(cgroup.rglob("*"), key=lambda p: len(p.parts), reverse=True) if cgroup.exists() else []
            ):
                if folder.is_dir():
                    folder.rmdir()
            if cgroup.exists():
                cgroup.rmdir()
        left = [pid for pid in ours if Path(f"/proc/{pid}").exists()]
        sentinel_kept = self._sentinel.exists()
        self._sentinel.unlink(missing_ok=True)
        if left:
            raise LabError(f"the box's processes outlived it: {left}")
        if not sentinel_kept:
            raise LabError(f"{self._sentinel} is gone: something cleaned this machine's /tmp")
