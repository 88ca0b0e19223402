"""The integration-test lab: a laptop and a server as network namespaces.

    lab = Lab.build(Path(tmpdir))      # LabUnavailable(reason) if impossible here
    lab.nbremote("up", "server")       # the real CLI, as nbr-laptop, in the laptop netns
    lab.server_exec(["tmux", "ls"], user=ALICE)
    lab.teardown()                     # idempotent; leaves nothing behind

Topology (an island: nothing joins it to the root namespace)::

    laptop netns  nbr-lap-<pid>-<n>        server netns  nbr-srv-<pid>-<n>
    eth0 192.168.77.10/24  <---- veth ---->  eth0 192.168.77.2/24
    user nbr-laptop runs ssh / nbremote      sshd :22 (Debian default config) in
                                             its own mount namespace, where
                                             /etc/ssh and /run are private copies

Everything else (users' homes, /tmp, /opt) is the host's filesystem, shared by
both "machines": the server users and the laptop user are different Unix users,
which is what keeps their state apart.

Why the rules that look paranoid are there: the only real network on the
machines that run this is a watched one, and a command in the root namespace
that addresses 192.168.77.x or 11.22.33.x would leave through the real default
route. So no veth ever touches the root namespace (both ends are created
directly inside the lab namespaces), the root namespace gets blackhole routes
for both ranges while a lab exists, and `Lab.assert_island()` checks it.

Only one lab can exist on a machine at a time (user names are fixed), which an
flock on /run/nbremote-lab/lock enforces across processes.

No pytest in here: the library is usable from scripts and benchmarks too.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Callable, Mapping, Optional, Protocol, Sequence

__all__ = [
    "ALICE",
    "BOB",
    "LAPTOP_USER",
    "LAB_USERS",
    "SERVER_USERS",
    "SERVER_ADDR",
    "LAPTOP_ADDR",
    "LAB_NET",
    "INTERNET_NET",
    "LAB_PREFIX",
    "LAB_VENV",
    "LAB_PYTHON",
    "SERVER_HOST_ALIAS",
    "SERVER_BOB_HOST_ALIAS",
    "Lab",
    "LabError",
    "LabUnavailable",
    "Link",
    "VethLink",
    "make_veth_link",
    "cleanup_leftovers",
    "etc_ssh_digest",
    "root_blackholes",
    "lab_lock",
]

log = logging.getLogger("nbremote.lab")

SERVER_ADDR = "192.168.77.2"
LAPTOP_ADDR = "192.168.77.10"
LAB_PREFIX = 24
LAB_NET = "192.168.77.0/24"
# Reserved for later "internet" hosts (a café, an echo service): a public,
# non-RFC1918 range because miniupnpd refuses reserved external addresses.
INTERNET_NET = "11.22.33.0/24"
BLACKHOLE_NETS = (LAB_NET, INTERNET_NET)

ALICE = "nbr-alice"
BOB = "nbr-bob"
LAPTOP_USER = "nbr-laptop"
SERVER_USERS = (ALICE, BOB)
LAB_USERS = (LAPTOP_USER, ALICE, BOB)

SERVER_HOST_ALIAS = "server"
SERVER_BOB_HOST_ALIAS = "server-bob"

LAB_VENV = Path("/opt/nbremote-lab/venv")
LAB_PYTHON = LAB_VENV / "bin" / "python"
SSHD = "/usr/sbin/sshd"
HOST_ETC_SSH = Path("/etc/ssh")

CLEAN_PATH = "/usr/local/bin:/usr/bin:/bin"
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Lock and mount-namespace files. /run is a tmpfs on normal machines, so a
# reboot forgets a crashed lab's files along with its namespaces.
STATE_DIR = Path("/run/nbremote-lab")
LOCK_FILE = STATE_DIR / "lock"

# nbr-<role>-<creator pid>-<sequence>: the pid tells a later build whether the
# creator is still alive, i.e. whether the thing is a leftover it may remove.
NAME_RE = re.compile(r"^nbr-([a-z]+)-(\d+)-(\d+)$")
SRC_COPY_PREFIX = "nbr-src-"
SRC_COPY_RE = re.compile(r"^nbr-src-(\d+)-")

REPO_ROOT = Path(__file__).resolve().parents[2]

# Per-user state wiped between tests, relative to the user's home.
USER_STATE_PATHS = (
    ".local/state/nbremote",
    ".cache/nbremote",
    ".local/share/jupyter/runtime",
)

# Per-uid directories in the shared /tmp: tmux sockets, and nbremote's
# runtime dir (ControlMaster sockets) when XDG_RUNTIME_DIR is unset, as here.
# They outlive the user, and uids are reused by the next build.
USER_TMP_PATHS = ("tmux-{uid}", "nbremote-{uid}")

ALICE_PROFILE_SNIPPET = f"""
# nbremote lab: Jupyter is on the login PATH only, the way a user-level install
# (pip --user, conda init, a module system) usually puts it.
PATH="{LAB_VENV}/bin:$PATH"
"""

_DEFAULT_LOCK_TIMEOUT = float(os.environ.get("NBREMOTE_LAB_LOCK_TIMEOUT", "300"))


class LabUnavailable(RuntimeError):
    """This machine cannot host the lab; `reason` says precisely why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class LabError(RuntimeError):
    """The lab could be built here in principle, but a step failed."""


# --------------------------------------------------------------------------
# small helpers


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("stdin", subprocess.DEVNULL)
    r = subprocess.run(list(argv), text=True, capture_output=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise LabError(f"`{shlex.join(argv)}` exited {r.returncode}: {(r.stderr or r.stdout).strip()}")
    return r


def _pid_alive(pid: int) -> bool:
    # Not os.kill(pid, 0): a daemon killed by a test stays a zombie until PID 1
    # reaps it, which on the lab VMs (PID 1 is not an init) takes a second or more.
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _proc_uid_and_state(pid: int) -> tuple[Optional[set[int]], str]:
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except OSError:
        return None, ""
    uids: set[int] = set()
    state = ""
    for line in text.splitlines():
        if line.startswith("Uid:"):
            # real and effective only: a root setuid helper run by the user
            # (e.g. ssh-keysign) still belongs to the user's session.
            uids = {int(x) for x in line.split()[1:3]}
        elif line.startswith("State:"):
            state = line.split()[1]
    return uids, state


def _uid_pids(uid: int) -> list[int]:
    me = os.getpid()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid == me:
            continue
        uids, state = _proc_uid_and_state(pid)
        # Zombies cannot be killed and hold nothing: their parent reaps them.
        if uids and uid in uids and state not in ("Z", "X"):
            pids.append(pid)
    return pids


def _kill_until_gone(list_pids: Callable[[], list[int]], what: str, timeout: float = 5.0) -> int:
    """SIGKILL whatever list_pids() returns until it returns nothing.

    Looping matters: a process can fork between listing and killing.
    """
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        pids = list_pids()
        if not pids:
            return len(killed)
        if time.monotonic() > deadline:
            raise LabError(f"processes of {what} survive SIGKILL: {pids}")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.02)


def _netns_pids(ns: str) -> list[int]:
    if not Path("/run/netns", ns).exists():
        return []
    r = _run(["ip", "netns", "pids", ns], check=False)
    me = os.getpid()
    return [int(x) for x in r.stdout.split() if x.isdigit() and int(x) != me]


def _tree_snapshot(root: Path) -> dict[str, tuple[int, Optional[bytes], Optional[str]]]:
    """relpath -> (mode, content for files, target for symlinks); dirs included."""
    snap: dict[str, tuple[int, Optional[bytes], Optional[str]]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                snap[rel] = (st.st_mode, None, os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                snap[rel] = (st.st_mode, p.read_bytes(), None)
            else:
                snap[rel] = (st.st_mode, None, None)
    return snap


def _restore_tree(
    root: Path, snap: Mapping[str, tuple[int, Optional[bytes], Optional[str]]], uid: int, gid: int
) -> bool:
    """Make root match snap again; return whether anything had to change."""
    changed = False
    current = _tree_snapshot(root) if root.exists() else {}
    if not root.exists():
        root.mkdir(parents=True)
        os.chown(root, uid, gid)
        changed = True
    # Deepest first so a directory is empty by the time it goes.
    for rel in sorted(set(current) - set(snap), key=lambda r: r.count("/"), reverse=True):
        p = root / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        changed = True
    for rel in sorted(snap, key=lambda r: r.count("/")):
        want = snap[rel]
        if current.get(rel) == want:
            continue
        changed = True
        mode, data, target = want
        p = root / rel
        if p.is_symlink() or (p.exists() and not p.is_dir()) or (p.is_dir() and not stat.S_ISDIR(mode)):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        if stat.S_ISDIR(mode):
            p.mkdir(exist_ok=True)
        elif target is not None:
            os.symlink(target, p)
            os.lchown(p, uid, gid)
            continue
        else:
            p.write_bytes(data or b"")
        os.chown(p, uid, gid)
        os.chmod(p, stat.S_IMODE(mode))
    return changed


def etc_ssh_digest(root: Path = HOST_ETC_SSH) -> str:
    """Checksum of a whole /etc/ssh-like tree: names, modes, contents, links."""
    h = hashlib.sha256()
    for rel, (mode, data, target) in sorted(_tree_snapshot(root).items()):
        h.update(f"{rel}\0{mode:o}\0{target}\0".encode())
        h.update(hashlib.sha256(data or b"").digest())
    return h.hexdigest()


# --------------------------------------------------------------------------
# the machine-wide lab lock


def _acquire_lab_lock(timeout: float, label: str) -> int:
    """flock LOCK_FILE; return the fd (closing it releases the lock)."""
    STATE_DIR.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
        if time.monotonic() >= deadline:
            try:
                holder = os.pread(fd, 128, 0).decode(errors="replace").strip()
            finally:
                os.close(fd)
            raise LabUnavailable(
                f"another lab holds {LOCK_FILE} ({holder or 'unknown holder'}) "
                f"for more than {timeout:.0f}s; the lab users are shared, so "
                "only one lab can run per machine"
            )
        time.sleep(0.2)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} {label}\n".encode(), 0)
    return fd


@contextlib.contextmanager
def lab_lock(timeout: float = _DEFAULT_LOCK_TIMEOUT):
    """Hold the lab lock without building a lab: while held, no lab exists on
    this machine (other than leftovers of a crash), so checks of global state
    (users, routes, namespaces) can't race with another process's lab."""
    fd = _acquire_lab_lock(timeout, "lab_lock()")
    try:
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# the laptop <-> server link


class Link(Protocol):
    """What Lab needs from a laptop<->server link.

    Made by a factory called as ``factory(laptop_ns, laptop_addr, server_ns,
    server_addr)``; the argument order is the one of
    ``delaylink.DelayLink.start``, so
    ``functools.partial(DelayLink.start, delay_ms=10)`` is a factory.
    """

    def set_down(self, down: bool = True) -> None: ...

    def stop(self) -> None: ...


LinkFactory = Callable[[str, str, str, str], Link]


class VethLink:
    """A plain veth pair, created with both ends already inside the lab.

    Creating the pair in the root namespace and moving the ends would briefly
    join the root namespace to the lab; `ip -n A link add ... peer ... netns B`
    never does.
    """

    def __init__(self, ns_a: str, ns_b: str, ifname: str):
        self.ns_a, self.ns_b, self.ifname = ns_a, ns_b, ifname
        self.down = False

    @classmethod
    def start(
        cls, ns_a: str, addr_a: str, ns_b: str, addr_b: str, prefix: int = LAB_PREFIX, ifname: str = "eth0"
    ) -> "VethLink":
        _run(["ip", "-n", ns_a, "link", "add", ifname, "type", "veth", "peer", "name", ifname, "netns", ns_b])
        link = cls(ns_a, ns_b, ifname)
        try:
            for ns, addr in ((ns_a, addr_a), (ns_b, addr_b)):
                _run(["ip", "-n", ns, "addr", "add", f"{addr}/{prefix}", "dev", ifname])
                _run(["ip", "-n", ns, "link", "set", "dev", ifname, "up"])
        except BaseException:
            link.stop()
            raise
        return link

    def set_down(self, down: bool = True) -> None:
        """Administratively down both ends. The endpoints see local errors
        (ENETUNREACH), not loss; for realistic outages use a relay link."""
        for ns in (self.ns_a, self.ns_b):
            _run(["ip", "-n", ns, "link", "set", "dev", self.ifname, "down" if down else "up"])
        self.down = bool(down)

    def stop(self) -> None:
        # Deleting one end deletes both; the namespace may already be gone.
        if Path("/run/netns", self.ns_a).exists():
            _run(["ip", "-n", self.ns_a, "link", "del", self.ifname], check=False)

    def __repr__(self) -> str:
        return f"VethLink({self.ns_a}<->{self.ns_b} dev {self.ifname})"


def make_veth_link(laptop_ns: str, laptop_addr: str, server_ns: str, server_addr: str) -> VethLink:
    """The default link factory."""
    return VethLink.start(laptop_ns, laptop_addr, server_ns, server_addr)


# --------------------------------------------------------------------------
# leftovers of crashed runs


def root_blackholes() -> set[tuple[str, int]]:
    """(dst, metric) of every blackhole route in the caller's namespace."""
    out = _run(["ip", "-j", "route", "show", "type", "blackhole"]).stdout
    return {(r["dst"], int(r.get("metric", 0))) for r in json.loads(out or "[]")}


def _del_blackhole(net: str) -> None:
    # Other test code keeps its own guard for the same range at another
    # metric, and `ip route del` without a match on ours would take the
    # next one: delete only if the metric-0 route (ours) is still there.
    if (net, 0) in root_blackholes():
        _run(["ip", "route", "del", "blackhole", net, "metric", "0"])
    else:
        log.warning("blackhole route for %s was already gone", net)


def _remove_tmp_state(uid: int) -> None:
    for pattern in USER_TMP_PATHS:
        shutil.rmtree(Path(tempfile.gettempdir(), pattern.format(uid=uid)), ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _remove_user(name: str) -> None:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return
    _kill_until_gone(lambda: _uid_pids(pw.pw_uid), f"user {name}")
    _remove_tmp_state(pw.pw_uid)
    # -f: a zombie whose parent has not reaped it yet still counts as "in use".
    r = _run(["userdel", "-r", "-f", name], check=False)
    # 12 = could not remove home; 6 is "no such user" (raced), both fine here
    # as long as the account is gone.
    if _user_exists(name):
        raise LabError(f"userdel {name} failed ({r.returncode}): {r.stderr.strip()}")
    if Path(pw.pw_dir).exists() and pw.pw_dir.startswith("/home/nbr-"):
        shutil.rmtree(pw.pw_dir, ignore_errors=True)


def _is_leftover(pid: int) -> bool:
    return pid != os.getpid() and not _pid_alive(pid)


def cleanup_leftovers() -> list[str]:
    """Remove what crashed lab runs left: namespaces, mount-namespace files,
    src copies whose creating pid is dead, and the fixed lab users.

    Only call this while holding the lab lock (Lab.build does): the users are
    shared by name, so removing them is only safe when no lab is alive.
    Returns what was removed, for the log.
    """
    removed: list[str] = []
    stale_ns = []
    if Path("/run/netns").is_dir():
        for ns in sorted(os.listdir("/run/netns")):
            m = NAME_RE.match(ns)
            if m and _is_leftover(int(m.group(2))):
                stale_ns.append(ns)
    # Processes first: a leftover sshd keeps the mount namespace busy.
    for ns in stale_ns:
        try:
            _kill_until_gone(lambda ns=ns: _netns_pids(ns), f"netns {ns}")
        except Exception as e:
            log.warning("leftover netns %s: %s", ns, e)
    if STATE_DIR.is_dir():
        for f in sorted(STATE_DIR.iterdir()):
            m = NAME_RE.match(f.name)
            if m and _is_leftover(int(m.group(2))):
                _run(["umount", str(f)], check=False)
                try:
                    f.unlink()
                    removed.append(str(f))
                except OSError as e:
                    log.warning("leftover %s: %s", f, e)
    for ns in stale_ns:
        r = _run(["ip", "netns", "del", ns], check=False)
        if r.returncode == 0:
            removed.append(f"netns {ns}")
        else:
            log.warning("leftover netns %s: %s", ns, r.stderr.strip())
    for entry in Path(tempfile.gettempdir()).glob(SRC_COPY_PREFIX + "*"):
        m = SRC_COPY_RE.match(entry.name)
        if m and _is_leftover(int(m.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(str(entry))
    for user in LAB_USERS:
        if _user_exists(user):
            _remove_user(user)
            removed.append(f"user {user}")
    if removed:
        log.warning("removed leftovers of an earlier lab: %s", ", ".join(removed))
    return removed


# --------------------------------------------------------------------------
# the lab


class _UserInfo:
    def __init__(self, name: str):
        pw = pwd.getpwnam(name)
        self.name = name
        self.uid = pw.pw_uid
        self.gid = pw.pw_gid
        self.home = Path(pw.pw_dir)
        self.shell = pw.pw_shell

    def env(self, path: str = CLEAN_PATH) -> dict[str, str]:
        return {
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "SHELL": self.shell,
            "PATH": path,
            "LANG": "C.UTF-8",
        }


def _merge_env(base: dict[str, str], extra: Optional[Mapping[str, Optional[str]]]) -> dict[str, str]:
    env = dict(base)
    for k, v in (extra or {}).items():
        if v is None:
            env.pop(k, None)  # lets a test drop e.g. LANG
        else:
            env[k] = v
    return env


class Lab:
    """A built lab. Create with `Lab.build(workdir)`; end with `teardown()`."""

    _seq = 0
    _seq_lock = threading.Lock()
    _live: "weakref.WeakSet[Lab]" = weakref.WeakSet()

    server_addr = SERVER_ADDR
    laptop_addr = LAPTOP_ADDR

    def __init__(self, workdir: Path, tag: str):
        self.workdir = Path(workdir)
        self.tag = tag
        self.laptop_ns = f"nbr-lap-{tag}"
        self.server_ns = f"nbr-srv-{tag}"
        self.server_mnt = STATE_DIR / f"nbr-srvmnt-{tag}"
        self.server_dir = self.workdir / "server"
        self.server_etc_ssh = self.server_dir / "etc-ssh"  # is /etc/ssh on the server
        self.server_run = self.server_dir / "run"  # is /run on the server
        self.sshd_log = self.workdir / "sshd.log"
        self.src_copy: Optional[Path] = None
        self.link: Optional[Link] = None
        self.users: dict[str, _UserInfo] = {}
        self.timings: dict[str, float] = {}
        self._lock_fd: Optional[int] = None
        self._namespaces: list[str] = []
        self._mnt_made = False
        self._routes: list[str] = []
        self._created_users: list[str] = []
        self._etc_snapshot: dict = {}
        self._ssh_snapshots: dict[str, dict] = {}
        self._torn_down = False
        self._teardown_lock = threading.Lock()

    # ---------------------------------------------------------------- build

    @classmethod
    def build(
        cls,
        workdir: Path,
        *,
        link_factory: Optional[LinkFactory] = None,
        src_dir: Optional[Path] = None,
        lock_timeout: float = _DEFAULT_LOCK_TIMEOUT,
    ) -> "Lab":
        """Build a fresh lab; raise LabUnavailable if this machine can't.

        workdir keeps the server's /etc/ssh and /run copies and sshd.log
        (kept after teardown, for post-mortems). src_dir is the package source
        to copy for the laptop (default: this repo's src/).
        """
        t0 = time.monotonic()
        _preflight()
        src_dir = Path(src_dir) if src_dir else REPO_ROOT / "src"
        with cls._seq_lock:
            seq = cls._seq
            cls._seq += 1
        lab = cls(Path(workdir), f"{os.getpid()}-{seq}")
        try:
            lab._acquire_lock(lock_timeout)
            t = time.monotonic()
            # Waiting for another lab is not build time.
            lab.timings["lock_wait"] = t - t0
            t0 = t
            cleanup_leftovers()
            lab.timings["leftovers"] = time.monotonic() - t
            lab._build(link_factory or make_veth_link, src_dir)
        except BaseException:
            lab.teardown()
            raise
        lab.timings["build"] = time.monotonic() - t0
        cls._live.add(lab)
        atexit.register(lab._teardown_at_exit)
        log.info("lab %s built in %.2fs: %s", lab.tag, lab.timings["build"], lab.timings)
        return lab

    def _acquire_lock(self, timeout: float) -> None:
        self._lock_fd = _acquire_lab_lock(timeout, f"lab {self.tag}")

    def _step(self, name: str, t: float) -> float:
        now = time.monotonic()
        self.timings[name] = now - t
        return now

    def _build(self, link_factory: LinkFactory, src_dir: Path) -> None:
        t = time.monotonic()
        # Guard first, so even a half-built lab can't leak traffic.
        for net in BLACKHOLE_NETS:
            _run(["ip", "route", "replace", "blackhole", net])
            self._routes.append(net)

        for ns in (self.laptop_ns, self.server_ns):
            _run(["ip", "netns", "add", ns])
            self._namespaces.append(ns)
            _run(["ip", "-n", ns, "link", "set", "dev", "lo", "up"])
        self.link = link_factory(self.laptop_ns, LAPTOP_ADDR, self.server_ns, SERVER_ADDR)
        t = self._step("network", t)

        # Key generation runs while the users are created: RSA-3072 alone is
        # about half a second on the lab VMs.
        self.server_dir.mkdir(parents=True, exist_ok=True)
        if self.server_etc_ssh.exists():
            shutil.rmtree(self.server_etc_ssh)
        shutil.copytree(HOST_ETC_SSH, self.server_etc_ssh, symlinks=True, ignore=shutil.ignore_patterns("ssh_host_*"))
        os.chmod(self.server_etc_ssh, 0o755)
        keygens = [
            subprocess.Popen(
                [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    kind,
                    "-N",
                    "",
                    "-C",
                    "root@nbr-server",
                    "-f",
                    str(self.server_etc_ssh / f"ssh_host_{kind}_key"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for kind in ("ed25519", "ecdsa", "rsa")
        ]
        laptop_key_dir = self.workdir / "laptop-key"
        shutil.rmtree(laptop_key_dir, ignore_errors=True)
        laptop_key_dir.mkdir(mode=0o700)
        keygens.append(
            subprocess.Popen(
                [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    f"{LAPTOP_USER}@laptop",
                    "-f",
                    str(laptop_key_dir / "id_ed25519"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
        try:
            for user in LAB_USERS:
                _run(
                    [
                        "useradd",
                        "--create-home",
                        "--shell",
                        "/bin/bash",
                        "--user-group",
                        "--comment",
                        "nbremote lab",
                        user,
                    ]
                )
                self._created_users.append(user)
                self.users[user] = _UserInfo(user)
        finally:
            for p in keygens:
                out = p.communicate(timeout=60)[0]
                if p.returncode != 0:
                    raise LabError(f"{shlex.join(p.args)} failed: {out!r}")
        t = self._step("users+keys", t)

        alice = self.users[ALICE]
        with open(alice.home / ".profile", "a") as f:
            f.write(ALICE_PROFILE_SNIPPET)
        self._setup_laptop_ssh(laptop_key_dir)
        self._etc_snapshot = _tree_snapshot(self.server_etc_ssh)

        self._make_server_mount_ns()
        self._start_sshd()
        t = self._step("server", t)

        self.src_copy = Path(tempfile.mkdtemp(prefix=f"{SRC_COPY_PREFIX}{self.tag}-"))
        os.chmod(self.src_copy, 0o755)
        self.sync_src(src_dir)
        self._step("src", t)

        self.assert_island()

    def _setup_laptop_ssh(self, key_dir: Path) -> None:
        laptop = self.users[LAPTOP_USER]
        pub = (key_dir / "id_ed25519.pub").read_text()
        host_pub = (self.server_etc_ssh / "ssh_host_ed25519_key.pub").read_text().split()
        ssh_config = "".join(
            f"Host {alias}\n    HostName {SERVER_ADDR}\n    User {user}\n\n"
            for alias, user in ((SERVER_HOST_ALIAS, ALICE), (SERVER_BOB_HOST_ALIAS, BOB))
        )
        files = {
            # Written from the server's key file: the laptop never has to
            # trust on first use, and a mismatch would be a real failure.
            "known_hosts": (f"{SERVER_ADDR} {host_pub[0]} {host_pub[1]}\n", 0o644),
            "config": (ssh_config, 0o600),
            "id_ed25519": ((key_dir / "id_ed25519").read_text(), 0o600),
            "id_ed25519.pub": (pub, 0o644),
        }
        self._write_ssh_dir(laptop, files)
        for name in SERVER_USERS:
            self._write_ssh_dir(self.users[name], {"authorized_keys": (pub, 0o600)})
        shutil.rmtree(key_dir, ignore_errors=True)
        for name, u in self.users.items():
            self._ssh_snapshots[name] = _tree_snapshot(u.home / ".ssh")

    @staticmethod
    def _write_ssh_dir(user: _UserInfo, files: Mapping[str, tuple[str, int]]) -> None:
        d = user.home / ".ssh"
        d.mkdir(mode=0o700, exist_ok=True)
        os.chown(d, user.uid, user.gid)
        os.chmod(d, 0o700)
        for name, (content, mode) in files.items():
            p = d / name
            p.write_text(content)
            os.chown(p, user.uid, user.gid)
            os.chmod(p, mode)

    def _make_server_mount_ns(self) -> None:
        (self.server_run / "sshd").mkdir(parents=True, exist_ok=True)
        os.chmod(self.server_run, 0o755)
        os.chmod(self.server_run / "sshd", 0o755)
        self.server_mnt.touch()
        self._mnt_made = True
        _run(["unshare", f"--mount={self.server_mnt}", "--propagation", "private", "true"])
        # The copy of the host's mount table includes every /run/netns/* bind,
        # which would pin other namespaces (ours included) for as long as this
        # one lives; nothing inside needs them, nsenter opens ns files from
        # outside.
        script = (
            "umount -R /run/netns 2>/dev/null; "
            f"mount --bind {shlex.quote(str(self.server_run))} /run && "
            f"mount --bind {shlex.quote(str(self.server_etc_ssh))} /etc/ssh"
        )
        _run(["nsenter", f"--mount={self.server_mnt}", "--", "sh", "-c", script])

    def _server_prefix(self) -> list[str]:
        return ["nsenter", f"--mount={self.server_mnt}", f"--net=/run/netns/{self.server_ns}", "--"]

    def _laptop_prefix(self) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.laptop_ns}", "--"]

    @staticmethod
    def _as_user(user: _UserInfo) -> list[str]:
        return ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups", "--"]

    # ---------------------------------------------------------------- sshd

    @property
    def sshd_pidfile(self) -> Path:
        """/run/sshd.pid as seen from the host."""
        return self.server_run / "sshd.pid"

    def sshd_pid(self) -> Optional[int]:
        try:
            pid = int(self.sshd_pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _pid_alive(pid) else None

    def _listen_count(self) -> int:
        try:
            return self.sshd_log.read_text(errors="replace").count("Server listening on 0.0.0.0 port 22")
        except OSError:
            return 0

    def _wait_listening(self, before: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._listen_count() > before:
                return
            time.sleep(0.01)
        raise LabError(f"sshd did not (re)start listening within {timeout}s; log {self.sshd_log}:\n{self._log_tail()}")

    def _log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.sshd_log.read_text(errors="replace").splitlines()[-n:])
        except OSError as e:
            return f"({e})"

    def _start_sshd(self) -> None:
        before = self._listen_count()
        # Daemonizes (as on a real server) and writes /run/sshd.pid in the
        # server's private /run.
        r = _run([*self._server_prefix(), SSHD, "-E", str(self.sshd_log)], check=False)
        if r.returncode != 0:
            raise LabError(f"sshd exited {r.returncode}: {r.stderr.strip()}\n{self._log_tail()}")
        self._wait_listening(before)

    def ensure_sshd(self) -> int:
        """Start sshd again if a test killed it; return its pid."""
        pid = self.sshd_pid()
        # A reloading sshd re-execs and rewrites its pid file: give it a moment
        # before deciding it is gone, or a second sshd fails on the busy port.
        deadline = time.monotonic() + 1.0
        while pid is None and time.monotonic() < deadline:
            time.sleep(0.05)
            pid = self.sshd_pid()
        if pid is None:
            self._start_sshd()
            # sshd logs that it listens before it writes its pid file.
            deadline = time.monotonic() + 3.0
            pid = self.sshd_pid()
            while pid is None and time.monotonic() < deadline:
                time.sleep(0.05)
                pid = self.sshd_pid()
            if pid is None:
                raise LabError(f"sshd started but {self.sshd_pidfile} has no live pid")
        return pid

    def kill_sshd(self) -> int:
        """SIGKILL the server's sshd, the listener and every session, as a crash of the service
        does; returns how many processes were killed. Only those in the server's network
        namespace: `pkill -x sshd` would also kill every other sshd on this machine, its own
        included, since namespaces of the network do not hide processes."""

        def sshds() -> list[int]:
            found = []
            for pid in _netns_pids(self.server_ns):
                try:
                    comm = Path(f"/proc/{pid}/comm").read_text().strip()
                except OSError:
                    continue
                if comm == "sshd" and _pid_alive(pid):
                    found.append(pid)
            return found

        return _kill_until_gone(sshds, f"sshd in {self.server_ns}")

    def reload_sshd(self) -> None:
        """SIGHUP sshd (as a real admin would) and wait until it listens again."""
        pid = self.ensure_sshd()
        before = self._listen_count()
        os.kill(pid, signal.SIGHUP)
        self._wait_listening(before)

    # ---------------------------------------------------------------- running things

    def user(self, name: str) -> _UserInfo:
        return self.users[name]

    def _server_cmd(self, argv: Sequence[str], user: Optional[str], env) -> tuple[list[str], dict, str]:
        if user is None:
            base = {"HOME": "/root", "USER": "root", "LOGNAME": "root", "PATH": ROOT_PATH, "LANG": "C.UTF-8"}
            return [*self._server_prefix(), *argv], _merge_env(base, env), "/"
        u = self.users[user]
        return ([*self._server_prefix(), *self._as_user(u), *argv], _merge_env(u.env(), env), str(u.home))

    def server_exec(
        self,
        argv: Sequence[str],
        user: Optional[str] = None,
        *,
        env: Optional[Mapping[str, Optional[str]]] = None,
        input: Optional[str] = None,
        timeout: float = 30,
        **kw,
    ) -> subprocess.CompletedProcess:
        """Run argv on the server (its mount + net namespace) as root or as
        `user`, with a clean env (HOME USER LOGNAME SHELL PATH LANG + env).
        Not a login shell: use ["bash", "-lc", ...] for the user's PATH."""
        cmd, full_env, cwd = self._server_cmd(argv, user, env)
        kw.setdefault("cwd", cwd)
        if input is None:
            kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(
            cmd, env=full_env, input=input, text=True, capture_output=True, timeout=timeout, check=False, **kw
        )

    def server_popen(
        self,
        argv: Sequence[str],
        user: Optional[str] = None,
        *,
        env: Optional[Mapping[str, Optional[str]]] = None,
        **kw,
    ) -> subprocess.Popen:
        """Like server_exec, but returns the Popen (own session, stdin
        /dev/null, text mode unless overridden)."""
        cmd, full_env, cwd = self._server_cmd(argv, user, env)
        kw.setdefault("cwd", cwd)
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("text", True)
        kw.setdefault("start_new_session", True)
        return subprocess.Popen(cmd, env=full_env, **kw)

    def _laptop_cmd(self, argv: Sequence[str], env) -> tuple[list[str], dict, str]:
        u = self.users[LAPTOP_USER]
        return ([*self._laptop_prefix(), *self._as_user(u), *argv], _merge_env(u.env(), env), str(u.home))

    def laptop_exec(
        self,
        argv: Sequence[str],
        env: Optional[Mapping[str, Optional[str]]] = None,
        input: Optional[str] = None,
        timeout: float = 60,
        **kw,
    ) -> subprocess.CompletedProcess:
        """Run argv as nbr-laptop inside the laptop netns; clean env
        (HOME USER LOGNAME SHELL PATH=/usr/local/bin:/usr/bin:/bin
        LANG=C.UTF-8) updated with env (a None value removes a variable)."""
        cmd, full_env, cwd = self._laptop_cmd(argv, env)
        kw.setdefault("cwd", cwd)
        if input is None:
            kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(
            cmd, env=full_env, input=input, text=True, capture_output=True, timeout=timeout, check=False, **kw
        )

    def laptop_popen(
        self, argv: Sequence[str], env: Optional[Mapping[str, Optional[str]]] = None, **kw
    ) -> subprocess.Popen:
        """Like laptop_exec, returning the Popen. It leads its own session, so
        `os.killpg(p.pid, signal.SIGINT)` is what a terminal's Ctrl-C does."""
        cmd, full_env, cwd = self._laptop_cmd(argv, env)
        kw.setdefault("cwd", cwd)
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("text", True)
        kw.setdefault("start_new_session", True)
        return subprocess.Popen(cmd, env=full_env, **kw)

    def nbremote_argv(self, *args: str) -> list[str]:
        return [str(LAB_PYTHON), "-m", "nbremote", *args]

    def nbremote_env(self, env: Optional[Mapping[str, Optional[str]]] = None) -> dict:
        assert self.src_copy is not None
        return _merge_env(
            {
                "PYTHONPATH": str(self.src_copy / "src"),
                # the copy is root-owned: no point trying
                "PYTHONDONTWRITEBYTECODE": "1",
            },
            env,
        )

    def nbremote(
        self,
        *args: str,
        env: Optional[Mapping[str, Optional[str]]] = None,
        input: Optional[str] = None,
        timeout: float = 60,
        **kw,
    ) -> subprocess.CompletedProcess:
        """`python -m nbremote ARGS` on the laptop, from the src copy."""
        return self.laptop_exec(
            self.nbremote_argv(*args), env=self.nbremote_env(env), input=input, timeout=timeout, **kw
        )

    def nbremote_popen(self, *args: str, env: Optional[Mapping[str, Optional[str]]] = None, **kw) -> subprocess.Popen:
        return self.laptop_popen(self.nbremote_argv(*args), env=self.nbremote_env(env), **kw)

    def ssh(self, *args: str, host: str = SERVER_HOST_ALIAS, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
        """`ssh -o BatchMode=yes HOST ARGS` from the laptop: never prompts."""
        return self.laptop_exec(["ssh", "-o", "BatchMode=yes", host, *args], timeout=timeout, **kw)

    def sync_src(self, src_dir: Optional[Path] = None) -> None:
        """Copy the package source again (the copy is what the laptop runs)."""
        assert self.src_copy is not None
        src_dir = Path(src_dir) if src_dir else REPO_ROOT / "src"
        dst = self.src_copy / "src"
        if dst.exists():
            shutil.rmtree(dst)
        if src_dir.is_dir():
            shutil.copytree(src_dir, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            dst.mkdir()
        # An installed package has its bytecode (pip compiles it); this root-owned copy is run
        # with PYTHONDONTWRITEBYTECODE, so without this every command the laptop runs would
        # compile each module it imports again (about 0.1 s of CPU a command here).
        _run([str(LAB_PYTHON), "-m", "compileall", "-q", str(dst)], timeout=120)
        # The repo may live under /root (0700): the laptop user reads this copy.
        _run(["chmod", "-R", "a+rX", str(self.src_copy)])

    # ---------------------------------------------------------------- link

    def replace_link(self, factory: LinkFactory) -> Link:
        """Swap the laptop<->server link (e.g. for a DelayLink); returns it.
        Existing TCP connections do not survive the swap."""
        old, self.link = self.link, None
        if old is not None:
            old.stop()
        self.link = factory(self.laptop_ns, LAPTOP_ADDR, self.server_ns, SERVER_ADDR)
        self.assert_island()
        return self.link

    # ---------------------------------------------------------------- checks

    def assert_island(self) -> None:
        """Raise AssertionError unless the lab is cut off from the root netns:
        no veth in a lab namespace has its peer outside the lab, no root veth
        has its peer inside, and the blackhole routes are in place."""
        lab_ns = set(self._namespaces)
        problems = []
        for ns in lab_ns:
            names_by_id = {
                e["id"]: e["name"]
                for e in json.loads(_run(["ip", "-n", ns, "-j", "netns", "list"]).stdout or "[]")
                if "id" in e
            }
            for link in json.loads(_run(["ip", "-n", ns, "-j", "link", "show"]).stdout):
                if "link_netnsid" not in link:
                    continue
                peer_ns = names_by_id.get(link["link_netnsid"])
                if peer_ns not in lab_ns:
                    problems.append(
                        f"{ns}/{link['ifname']} has its peer in {peer_ns or 'an unnamed namespace (the root one?)'}"
                    )
        root_ids = {
            e["id"]: e["name"] for e in json.loads(_run(["ip", "-j", "netns", "list"]).stdout or "[]") if "id" in e
        }
        for link in json.loads(_run(["ip", "-j", "link", "show"]).stdout):
            peer_ns = root_ids.get(link.get("link_netnsid", -1))
            if peer_ns in lab_ns:
                problems.append(f"root namespace's {link['ifname']} is a peer of a link in {peer_ns}")
        blackholes = root_blackholes()
        for net in BLACKHOLE_NETS:
            if (net, 0) not in blackholes:
                problems.append(f"no blackhole route for {net} in the root namespace")
        if problems:
            raise AssertionError("lab is not an island: " + "; ".join(problems))

    # ---------------------------------------------------------------- between tests

    def kill_user_processes(self, user: str) -> int:
        """SIGKILL every process of a lab user (on laptop and server alike:
        they share the kernel); returns how many were killed."""
        u = self.users.get(user) or _UserInfo(user)
        return _kill_until_gone(lambda: _uid_pids(u.uid), f"user {user}")

    def cleanup_between_tests(self) -> None:
        """Back to the just-built state, keeping sshd (and the link) up:
        kill every process of the lab users, remove their nbremote/Jupyter
        state, tmux sockets and /tmp runtime dirs, restore their ~/.ssh and the server's
        /etc/ssh (reloading sshd if it had changed), restart sshd if dead.
        Raises LabError listing every step that failed."""
        errors = []
        for name in LAB_USERS:
            try:
                self.kill_user_processes(name)
            except Exception as e:
                errors.append(f"kill {name}: {e}")
        for name in LAB_USERS:
            u = self.users[name]
            try:
                for rel in USER_STATE_PATHS:
                    shutil.rmtree(u.home / rel, ignore_errors=True)
                _remove_tmp_state(u.uid)
                # ControlMaster sockets of killed masters, edited configs,
                # keys a test added: all go back.
                _restore_tree(u.home / ".ssh", self._ssh_snapshots[name], u.uid, u.gid)
            except Exception as e:
                errors.append(f"state of {name}: {e}")
        try:
            if self.link is not None and getattr(self.link, "down", False):
                self.link.set_down(False)
        except Exception as e:
            errors.append(f"link up: {e}")
        try:
            if _restore_tree(self.server_etc_ssh, self._etc_snapshot, 0, 0):
                if self.sshd_pid() is not None:
                    self.reload_sshd()
        except Exception as e:
            errors.append(f"server /etc/ssh: {e}")
        try:
            self.ensure_sshd()
        except Exception as e:
            errors.append(f"sshd: {e}")
        if errors:
            raise LabError("cleanup between tests failed: " + "; ".join(errors))

    # ---------------------------------------------------------------- teardown

    def _teardown_at_exit(self) -> None:
        if not self._torn_down:
            log.warning("lab %s torn down at interpreter exit", self.tag)
            self.teardown()

    def teardown(self) -> list[str]:
        """Remove everything the lab made (workdir contents excepted).
        Idempotent; every step is attempted even if an earlier one fails.
        Returns the failures (also logged)."""
        with self._teardown_lock:
            if self._torn_down:
                return []
            failures: list[str] = []

            def step(what: str, fn: Callable[[], object]) -> None:
                try:
                    fn()
                except Exception as e:
                    log.error("lab %s teardown: %s: %s", self.tag, what, e)
                    failures.append(f"{what}: {e}")

            t0 = time.monotonic()
            if self.link is not None:
                step("stop link", self.link.stop)
                self.link = None
            for name in self._created_users:
                if name in self.users:
                    step(f"kill {name}", lambda n=name: self.kill_user_processes(n))
            for ns in self._namespaces:
                step(f"kill processes in {ns}", lambda ns=ns: _kill_until_gone(lambda: _netns_pids(ns), f"netns {ns}"))
            if self._mnt_made:

                def drop_mnt():
                    r = _run(["umount", str(self.server_mnt)], check=False)
                    if r.returncode != 0 and "not mounted" not in r.stderr:
                        raise LabError(r.stderr.strip())
                    self.server_mnt.unlink(missing_ok=True)

                step("server mount namespace", drop_mnt)
            for ns in reversed(self._namespaces):
                step(f"delete netns {ns}", lambda ns=ns: _run(["ip", "netns", "del", ns]))
            for name in reversed(self._created_users):
                step(f"remove user {name}", lambda n=name: _remove_user(n))
            for net in self._routes:
                step(f"blackhole {net}", lambda net=net: _del_blackhole(net))
            if self.src_copy is not None:
                step("src copy", lambda: shutil.rmtree(self.src_copy))
            if self._lock_fd is not None:

                def unlock():
                    os.close(self._lock_fd)  # closing releases the flock
                    self._lock_fd = None

                step("lock", unlock)
            self._torn_down = True
            self.timings["teardown"] = time.monotonic() - t0
            Lab._live.discard(self)
            try:
                atexit.unregister(self._teardown_at_exit)
            except Exception:
                pass
            if failures:
                log.error("lab %s teardown left problems: %s", self.tag, failures)
            return failures

    @property
    def alive(self) -> bool:
        return not self._torn_down

    @classmethod
    def live_labs(cls) -> list["Lab"]:
        return list(cls._live)

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()

    def __repr__(self) -> str:
        state = "torn down" if self._torn_down else "live"
        return f"<Lab {self.tag} {state}: {self.laptop_ns} <-> {self.server_ns}>"


def _preflight() -> None:
    """Everything the lab needs that the build itself can't fix."""
    if os.geteuid() != 0:
        raise LabUnavailable(
            f"needs root (running as uid {os.geteuid()}): it creates network namespaces, users and mounts"
        )
    tools = [
        "ip",
        "nsenter",
        "unshare",
        "setpriv",
        "useradd",
        "userdel",
        "ssh",
        "ssh-keygen",
        "tmux",
        "mount",
        "umount",
    ]
    missing = [t for t in tools if shutil.which(t, path=ROOT_PATH) is None]
    if missing:
        raise LabUnavailable(
            f"missing tools: {', '.join(missing)} (apt-get install iproute2 util-linux passwd openssh-client tmux)"
        )
    if not os.access(SSHD, os.X_OK):
        raise LabUnavailable(f"{SSHD} not found (apt-get install openssh-server)")
    if not (HOST_ETC_SSH / "sshd_config").is_file():
        raise LabUnavailable(
            f"{HOST_ETC_SSH}/sshd_config missing: the server copies Debian's default config from there"
        )
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if r.returncode != 0:
        raise LabUnavailable(f"`ip netns` does not work here: {r.stderr.strip()}")
    if not LAB_PYTHON.exists() or not (LAB_VENV / "bin" / "jupyter").exists():
        raise LabUnavailable(
            f"{LAB_VENV} is missing or has no jupyter; create it with scripts/test.sh "
            "(a venv from /usr/bin/python3 with jupyterlab, notebook, click, pytest)"
        )
    # The lab users run this venv, so every directory down to it must be
    # world-traversable (a venv from the /root pyenv python is not).
    for p in [LAB_VENV, *LAB_VENV.parents]:
        if p == Path("/"):
            break
        if not os.stat(p).st_mode & stat.S_IXOTH:
            raise LabUnavailable(
                f"{p} is not world-traversable: the lab users could not "
                f"run {LAB_PYTHON} (chmod -R a+rX /opt/nbremote-lab)"
            )
    real = Path(os.path.realpath(LAB_PYTHON))
    for p in [real, *real.parents]:
        if p == Path("/"):
            break
        if not os.stat(p).st_mode & stat.S_IXOTH:
            raise LabUnavailable(
                f"{LAB_PYTHON} resolves to {real}, and {p} is not "
                "world-traversable: build the venv from /usr/bin/python3"
            )
