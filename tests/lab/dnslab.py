"""A DNS server on the internet side of the home network: BIND 9, authoritative for a test zone.

    dns = DnsLab.build(home, workdir)     # after homenet's HomeNet is built
    dns.key_file(mode=0o600)              # the TSIG key named accepts, for `server ddns --key`
    dns.lookup(NAME)                      # what the internet sees (dig from the café)
    dns.zone_text()                       # the whole zone (AXFR): proof that nothing changed
    dns.cafe_laptop(argv)                 # the laptop in the café, resolving through this server
    dns.teardown()

Topology (another /26 of the island's 11.22.33.0/24, behind the café as the relay is)::

    dns netns   eth0 11.22.33.194/26 ── dn0 11.22.33.193/26  café netns
                default via .193; named on .194:53, `recursion no`

The zone's update-policy grants the key only NAME's A and AAAA records, as a
provider's DNS (or the user's own BIND) would. The café's resolver is this
server: its commands run in a mount namespace of their own where
/etc/resolv.conf is a file naming 11.22.33.194, so this machine's resolver
is never touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from homenet import HomeNet
from netlab import LAPTOP_USER, LabError, _kill_until_gone, _netns_pids, _run

ZONE = "nbr.test"
NAME = f"gpubox.{ZONE}"
OTHER_ZONE = "elsewhere.test"  # a zone this server is not authoritative for
CAFE_DNS_SIDE, DNS_ADDR = "11.22.33.193", "11.22.33.194"
DNS_NET = "11.22.33.192/26"
KEY_NAME = "ddns-key"

NAMED_CONF = """include "{dir}/ddns.key";
options {{
    directory "{dir}";
    listen-on {{ {addr}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    pid-file "{dir}/named.pid";
    session-keyfile "{dir}/session.key";
    managed-keys-directory "{dir}";
    allow-transfer {{ any; }};
}};
controls {{ }};
zone "{zone}" {{
    type primary;
    file "{dir}/{zone}.zone";
    update-policy {{ grant {key} name {name}. A AAAA; }};
}};
"""

ZONE_FILE = """$TTL 60
@       IN SOA ns.{zone}. hostmaster.{zone}. ( 1 60 60 3600 60 )
        IN NS  ns.{zone}.
ns      IN A   {addr}
www     IN A   11.22.33.200
"""


class DnsLab:
    def __init__(self, home: HomeNet, workdir: Path) -> None:
        self.home = home
        self.ns = f"nbr-dns-{home.lab.tag}"
        # named runs as user bind: a folder it can enter and write (its journal), not pytest's root-only one.
        self.dir = Path(tempfile.mkdtemp(prefix="nbr-named-"))
        self.log = workdir / "named.log"
        self.named: subprocess.Popen | None = None
        self.resolv = self.dir / "resolv.conf"
        self._made_ns = False

    @classmethod
    def build(cls, home: HomeNet, workdir: Path) -> "DnsLab":
        workdir.mkdir(parents=True, exist_ok=True)
        dns = cls(home, workdir)
        try:
            dns._build()
        except BaseException:
            dns.teardown()
            raise
        return dns

    def _build(self) -> None:
        if not Path("/usr/sbin/named").exists():
            raise LabError("BIND is not installed (apt-get install bind9 bind9-dnsutils)")
        _run(["ip", "netns", "add", self.ns])
        self._made_ns = True
        _run(["ip", "-n", self.ns, "link", "set", "lo", "up"])
        cafe = self.home.cafe_ns
        _run(["ip", "-n", cafe, "link", "add", "dn0", "type", "veth", "peer", "name", "eth0", "netns", self.ns])
        for ns, dev, addr in ((cafe, "dn0", f"{CAFE_DNS_SIDE}/26"), (self.ns, "eth0", f"{DNS_ADDR}/26")):
            _run(["ip", "-n", ns, "addr", "add", addr, "dev", dev])
            _run(["ip", "-n", ns, "link", "set", dev, "up"])
        _run(["ip", "-n", self.ns, "route", "replace", "default", "via", CAFE_DNS_SIDE])
        _run(["ip", "netns", "exec", cafe, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        self.home.route_via_cafe(DNS_NET)
        self.home.join(self.ns)
        self.home.assert_island()

        key = _run(["tsig-keygen", "-a", "hmac-sha256", KEY_NAME]).stdout
        (self.dir / "ddns.key").write_text(key)
        (self.dir / "named.conf").write_text(
            NAMED_CONF.format(dir=self.dir, addr=DNS_ADDR, zone=ZONE, key=KEY_NAME, name=NAME)
        )
        (self.dir / f"{ZONE}.zone").write_text(ZONE_FILE.format(zone=ZONE, addr=DNS_ADDR))
        self.resolv.write_text(f"nameserver {DNS_ADDR}\noptions timeout:1 attempts:2\n")
        shutil.chown(self.dir, "bind", "bind")
        for path in self.dir.iterdir():
            shutil.chown(path, "bind", "bind")
        os.chmod(self.dir, 0o755)
        os.chmod(self.resolv, 0o644)
        self.named = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.ns}", "--", "/usr/sbin/named", "-f", "-u", "bind"]
            + ["-c", str(self.dir / "named.conf"), "-L", str(self.log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 15
        while self.lookup(f"ns.{ZONE}") != [DNS_ADDR]:
            if self.named.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"named did not answer: {self.log.read_text()[-2000:] if self.log.exists() else ''}")
            time.sleep(0.1)

    def key_text(self) -> str:
        return (self.dir / "ddns.key").read_text()

    def key_file(self, path: Path, text: str | None = None, mode: int = 0o600) -> Path:
        """A copy of the key (or text) at path, root's, with mode: the file `server ddns --key` reads."""
        path.write_text(self.key_text() if text is None else text)
        os.chmod(path, mode)
        return path

    def dig(self, *args: str) -> subprocess.CompletedProcess:
        """dig at this server, from the café (the internet side)."""
        return self.home.cafe_exec(["dig", "+norec", "+time=2", "+tries=1", f"@{DNS_ADDR}", *args])

    def lookup(self, name: str) -> list[str]:
        return sorted(self.dig("+short", name, "A").stdout.split())

    def zone_text(self) -> str:
        """The zone as a transfer gives it: its serial goes up with any update."""
        done = self.dig("+nocmd", "+nostats", "+nocomments", ZONE, "AXFR")
        if done.returncode != 0 or "SOA" not in done.stdout:
            raise LabError(f"zone transfer failed: {done.stdout}{done.stderr}")
        return done.stdout

    def cafe_laptop(self, argv: list[str], env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        """argv as the laptop's user in the café, its names resolved by this server."""
        u = self.home.lab.user(LAPTOP_USER)
        return subprocess.run(
            ["nsenter", f"--net=/run/netns/{self.home.cafe_ns}", "--"]
            + ["unshare", "--mount", "--propagation", "private", "--"]
            + ["sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(self.resolv)]
            + ["setpriv", f"--reuid={u.uid}", f"--regid={u.gid}", "--init-groups", "--", *argv],
            env={**u.env(), **(env or {})},
            cwd=str(u.home),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )

    def stop_named(self) -> None:
        if self.named is not None and self.named.poll() is None:
            os.killpg(self.named.pid, signal.SIGTERM)
            try:
                self.named.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.named.pid, signal.SIGKILL)
                self.named.wait(10)
        self.named = None

    def teardown(self) -> None:
        self.stop_named()
        if self._made_ns:
            _kill_until_gone(lambda: _netns_pids(self.ns), f"netns {self.ns}")
            if Path("/run/netns", self.home.cafe_ns).exists():
                _run(["ip", "-n", self.home.cafe_ns, "link", "del", "dn0"], check=False)
            _run(["ip", "netns", "del", self.ns], check=False)
            self._made_ns = False
        shutil.rmtree(self.dir, ignore_errors=True)
