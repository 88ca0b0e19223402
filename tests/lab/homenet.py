"""A home network around the lab's server: a router with UPnP and a café on the internet.

    home = HomeNet.build(lab)           # after netlab's Lab is built
    home.cafe_exec(["ssh", ...])        # a client on the internet side
    home.forward_port(22022)            # the router's WAN 22022 to the server's sshd
    home.laptop_uplink()                # the laptop gets a second way out, through the café
    home.add_relay()                    # a VPS on the internet side with a stock sshd
    home.renumber_wan("11.22.33.2")     # the provider changes the router's WAN address
    home.teardown()

Topology, still an island (no veth touches the root namespace; netlab's
blackhole routes cover both ranges)::

    server netns  eth1 192.168.77.130/25 ── lan0 192.168.77.129/25  router netns
                  default via .129                    wan0 11.22.33.1/24
                                                        │
    café netns    eth0 11.22.33.10/24  ─────────────────┘   (echo service on :80)

    laptop netns  wan1 11.22.33.66/26 ── up0 11.22.33.65/26  café netns   (laptop_uplink)
                  default via .65               masquerade out of eth0

    relay netns   eth0 11.22.33.130/26 ── rl0 11.22.33.129/26  café netns   (add_relay)
                  default via .129; sshd on .130:22 as a VPS has it

With ``HomeNet.build(lab, workdir, ipv6=True)`` the home has IPv6 as most
lines now do: the provider routes a /64 of its own (no NAT66) to the router,
the server takes a global address in it, and the router's forward chain lets
in from the WAN only what is established or what miniupnpd's pinholes allow
(UPnP IGD v2 WANIPv6FirewallControl, which miniupnpd serves on the LAN)::

    server netns  eth1 3ffe:0:77:1::2/64 ── lan0 3ffe:0:77:1::1/64, fe80::1  router netns
                  default via fe80::1              wan0 3ffe:0:0:1::1/64
                                                     │  (the café routes 3ffe:0:77::/48 to it)
    café netns    eth0 3ffe:0:0:1::10/64  ───────────┘

3ffe::/16, not the documentation range 2001:db8::/32: the server reports only
addresses the internet can route (addresses.public_ip, Python's is_global), and
2001:db8:: is not one, so a lab on it would never see the box's IPv6 reported
and the café's profile would never learn it, where a real home's would. The lab
must be no kinder than the world, and the production check no looser than it
is; so the lab takes a prefix that is global to that check. 3ffe::/16 was the
6bone's, returned to IANA in 2006 and assigned to no one since: nothing real
answers there, and the lab is an island of namespaces anyway (no link to the
root namespace), where the root namespace also gets a blackhole route for it
while the home exists, as netlab does for IPv4: this machine may have IPv6 of
its own, and a mistaken command there must not leave. miniupnpd opens pinholes
for it as for any global prefix.

The /25 is more specific than the lab's 192.168.77.0/24 on eth0, so the
laptop (192.168.77.10) is still reached directly. With laptop_uplink the
laptop is on the café's Wi-Fi as well as on the home LAN (its eth0): it
reaches the router's WAN address the way a laptop away from home does, and
when its LAN link goes, that is the way left. The café's NAT is what a café
has, and it spares the router a route back to the laptop's /26. The router forwards LAN to
WAN with masquerade and drops new WAN-to-LAN traffic except what miniupnpd's
chains let through; miniupnpd refuses reserved WAN addresses, hence 11.22.33/24.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from netlab import BLACKHOLE_NETS, LAPTOP_USER, LabError, _kill_until_gone, _netns_pids, _run, root_blackholes

ROUTER_LAN, ROUTER_WAN, SERVER_LAN2, CAFE_ADDR = "192.168.77.129", "11.22.33.1", "192.168.77.130", "11.22.33.10"
CAFE_WIFI, LAPTOP_WIFI = "11.22.33.65", "11.22.33.66"  # a /26 inside the blackholed 11.22.33.0/24
CAFE_RELAY_SIDE, RELAY_ADDR = "11.22.33.129", "11.22.33.130"  # another /26 of it
WAN_ADDR = ROUTER_WAN
ECHO_URL = f"http://{CAFE_ADDR}/ip"
V6_NET = "3ffe::/16"  # global to addresses.public_ip (see above); blackholed in the root namespace meanwhile
ROUTER_LAN6, ROUTER_LINK6, SERVER_V6 = "3ffe:0:77:1::1", "fe80::1", "3ffe:0:77:1::2"
ROUTER_WAN6, CAFE_V6 = "3ffe:0:0:1::1", "3ffe:0:0:1::10"
HOME_PREFIX6 = "3ffe:0:77::/48"  # what the provider routes to the router

ROUTER_RULES = """
table inet filter {
    chain forward {
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        ct status dnat accept
        iifname "lan0" oifname "wan0" accept
        jump miniupnpd
    }
    chain miniupnpd { }
    chain prerouting {
        type nat hook prerouting priority -100; policy accept;
        jump prerouting_miniupnpd
    }
    chain postrouting {
        type nat hook postrouting priority 100; policy accept;
        jump postrouting_miniupnpd
        oifname "wan0" masquerade
    }
    chain prerouting_miniupnpd { }
    chain postrouting_miniupnpd { }
}
"""

MINIUPNPD_CONF = """ext_ifname=wan0
listening_ip=lan0
port=0
enable_natpmp=no
enable_upnp=yes
secure_mode=yes
system_uptime=yes
lease_file={lease_file}
{ipv6}
uuid=3d9d6b1e-5c2b-4f45-9a5f-6e1c0a0b2c77
upnp_table_name=filter
upnp_nat_table_name=filter
upnp_forward_chain=miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
allow 1024-65535 192.168.77.128/25 1-65535
deny 0-65535 0.0.0.0/0 0-65535
"""

# A stand-in for the public "what is my IP" services: answers the caller's address.
ECHO_SERVER = r"""
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (self.client_address[0] + "\n").encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("0.0.0.0", 80), H).serve_forever()
"""


class HomeNet:
    def __init__(self, lab, workdir: Path, ipv6: bool = False) -> None:
        self.lab = lab
        self.workdir = workdir
        self.ipv6 = ipv6
        self._v6_blackhole = False
        tag = lab.tag
        self.router_ns, self.cafe_ns = f"nbr-rtr-{tag}", f"nbr-cafe-{tag}"
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen] = []
        self.miniupnpd: subprocess.Popen | None = None
        self.miniupnpd_log = workdir / "miniupnpd.log"
        self.relay_ns = f"nbr-rly-{tag}"
        self.relay_dir = workdir / "relay"
        self.relay_sshd: subprocess.Popen | None = None
        self.relay_keys: Path | None = None
        self.wan_address = ROUTER_WAN
        self._cafe_routes: list[str] = []
        self._old_wan: list[str] = []

    @classmethod
    def build(cls, lab, workdir: Path, ipv6: bool = False) -> "HomeNet":
        workdir.mkdir(parents=True, exist_ok=True)
        home = cls(lab, workdir, ipv6)
        try:
            home._build()
        except BaseException:
            home.teardown()
            raise
        return home

    def _build(self) -> None:
        if self.ipv6:
            # Guard first, as netlab does: nothing of the lab's IPv6 can leave from the root namespace.
            _run(["ip", "-6", "route", "replace", "blackhole", V6_NET])
            self._v6_blackhole = True
        for ns in (self.router_ns, self.cafe_ns):
            _run(["ip", "netns", "add", ns])
            self._namespaces.append(ns)
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        srv = self.lab.server_ns
        # Both ends created inside the lab: the root namespace never holds one.
        _run(["ip", "-n", self.router_ns, "link", "add", "lan0", "type", "veth", "peer", "name", "eth1", "netns", srv])
        _run(
            [
                "ip",
                "-n",
                self.router_ns,
                "link",
                "add",
                "wan0",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                self.cafe_ns,
            ]
        )
        for ns, dev, addr in (
            (self.router_ns, "lan0", f"{ROUTER_LAN}/25"),
            (srv, "eth1", f"{SERVER_LAN2}/25"),
            (self.router_ns, "wan0", f"{ROUTER_WAN}/24"),
            (self.cafe_ns, "eth0", f"{CAFE_ADDR}/24"),
        ):
            _run(["ip", "-n", ns, "addr", "add", addr, "dev", dev])
            _run(["ip", "-n", ns, "link", "set", dev, "up"])
        _run(["ip", "-n", srv, "route", "replace", "default", "via", ROUTER_LAN])
        _run(["ip", "netns", "exec", self.router_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        rules = self.ns_exec(self.router_ns, ["nft", "-f", "-"], input=ROUTER_RULES)
        if rules.returncode != 0:
            raise LabError(f"router rules: {rules.stderr.strip()}")
        if self.ipv6:
            self._build_ipv6()
        self.assert_island()
        self._procs.append(self._popen(self.cafe_ns, ["python3", "-c", ECHO_SERVER]))
        self.start_miniupnpd()
        self._wait(lambda: "0.0.0.0:80" in self.ns_exec(self.cafe_ns, ["ss", "-Htln"]).stdout, "echo service")

    def _build_ipv6(self) -> None:
        """Global addresses, routed: see the module's docstring. `nodad`: usable at once."""
        srv = self.lab.server_ns
        for ns, dev, addr in (
            (self.router_ns, "lan0", f"{ROUTER_LAN6}/64"),
            (self.router_ns, "lan0", f"{ROUTER_LINK6}/64"),
            (srv, "eth1", f"{SERVER_V6}/64"),
            (self.router_ns, "wan0", f"{ROUTER_WAN6}/64"),
            (self.cafe_ns, "eth0", f"{CAFE_V6}/64"),
        ):
            _run(["ip", "-n", ns, "-6", "addr", "add", addr, "dev", dev, "nodad"])
        # The router's link-local address, as a router advertisement would give it.
        _run(["ip", "-n", srv, "-6", "route", "replace", "default", "via", ROUTER_LINK6, "dev", "eth1"])
        _run(["ip", "-n", self.cafe_ns, "-6", "route", "replace", HOME_PREFIX6, "via", ROUTER_WAN6])
        _run(["ip", "netns", "exec", self.router_ns, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])

    def ipv4_from_internet(self, allowed: bool) -> None:
        """allowed=False: nothing new from the internet reaches the home over IPv4, forwards
        included, as behind a provider's carrier-grade NAT; IPv6 is untouched. (After
        conntrack, before DNAT: the home's own connections out still get their answers.)"""
        if allowed:
            self.ns_exec(self.router_ns, ["nft", "delete", "table", "ip", "nbrtest_cgnat"])
            return
        table = (
            "table ip nbrtest_cgnat {\n chain prerouting {\n type filter hook prerouting priority -150;\n"
            ' iifname "wan0" ct state new drop\n }\n}\n'
        )
        done = self.ns_exec(self.router_ns, ["nft", "-f", "-"], input=table)
        if done.returncode != 0:
            raise LabError(f"IPv4 cut: {done.stderr.strip()}")

    def pinholes(self, address: str) -> list[str]:
        """The rules miniupnpd added to its forward chain for pinholes to `address`. It matches
        raw header fields, which nft may print as such (@nh,192,128 0x2001…): either form counts."""
        packed = "0x" + ipaddress.IPv6Address(address).packed.hex()
        chain = self.ns_exec(self.router_ns, ["nft", "list", "chain", "inet", "filter", "miniupnpd"]).stdout
        return [line.strip() for line in chain.splitlines() if address in line or packed in line]

    def forward_chain(self) -> str:
        """miniupnpd's forward chain as nft prints it, for a failing test's message."""
        return self.ns_exec(self.router_ns, ["nft", "list", "chain", "inet", "filter", "miniupnpd"]).stdout

    def forward_port(self, external: int, internal: int = 22) -> None:
        """A port forward set by hand in the router's page: WAN `external` to the server's sshd."""
        rule = (
            f'add rule inet filter prerouting iifname "wan0" tcp dport {external} '
            f'dnat ip to {SERVER_LAN2}:{internal} comment "nbrtest-forward-{external}"\n'
        )
        done = self.ns_exec(self.router_ns, ["nft", "-f", "-"], input=rule)
        if done.returncode != 0:
            raise LabError(f"port forward {external}: {done.stderr.strip()}")

    def laptop_uplink(self) -> None:
        """The lab's laptop joins the café's Wi-Fi too (see the module's docstring)."""
        lap = self.lab.laptop_ns
        _run(["ip", "-n", self.cafe_ns, "link", "add", "up0", "type", "veth", "peer", "name", "wan1", "netns", lap])
        for ns, dev, addr in ((self.cafe_ns, "up0", f"{CAFE_WIFI}/26"), (lap, "wan1", f"{LAPTOP_WIFI}/26")):
            _run(["ip", "-n", ns, "addr", "add", addr, "dev", dev])
            _run(["ip", "-n", ns, "link", "set", dev, "up"])
        _run(["ip", "-n", lap, "route", "replace", "default", "via", CAFE_WIFI])
        _run(["ip", "netns", "exec", self.cafe_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        nat = (
            "table ip cafe {\n chain postrouting {\n type nat hook postrouting priority 100;\n"
            ' oifname "eth0" masquerade\n }\n}\n'
        )
        done = self.ns_exec(self.cafe_ns, ["nft", "-f", "-"], input=nat)
        if done.returncode != 0:
            raise LabError(f"café NAT: {done.stderr.strip()}")
        self.assert_island()

    def route_via_cafe(self, net: str) -> None:
        """The router reaches net (a host behind the café) through the café, as the internet would route it."""
        _run(["ip", "-n", self.router_ns, "route", "replace", net, "via", CAFE_ADDR])
        if net not in self._cafe_routes:
            self._cafe_routes.append(net)

    def join(self, ns: str) -> None:
        """A namespace another lab module made on the internet side: island-checked, removed at teardown."""
        if ns not in self._namespaces:
            self._namespaces.append(ns)

    def renumber_wan(self, address: str) -> str:
        """The provider gives the router a new WAN address; the old one stops working at once.

        The new address is added before the old goes (promote_secondaries keeps it when the
        old primary is deleted); packets still sent to the old address are dropped ahead of
        the NAT, or the café's neighbour cache and the port forwards would keep it working.
        Returns the old address."""
        old = self.wan_address
        rtr = self.router_ns
        _run(["ip", "netns", "exec", rtr, "sysctl", "-qw", "net.ipv4.conf.wan0.promote_secondaries=1"])
        _run(["ip", "-n", rtr, "addr", "add", f"{address}/24", "dev", "wan0"])
        _run(["ip", "-n", rtr, "addr", "del", f"{old}/24", "dev", "wan0"])
        for net in self._cafe_routes:
            _run(["ip", "-n", rtr, "route", "replace", net, "via", CAFE_ADDR])
        rules = (
            "table ip renumbered\ndelete table ip renumbered\n"
            "table ip renumbered {\n chain prerouting {\n type filter hook prerouting priority -300;\n"
            + "".join(f" ip daddr {gone} drop\n" for gone in self._old_wan + [old] if gone != address)
            + " }\n}\n"
        )
        done = self.ns_exec(rtr, ["nft", "-f", "-"], input=rules)
        if done.returncode != 0:
            raise LabError(f"renumbering the WAN: {done.stderr.strip()}")
        self._old_wan.append(old)
        self.wan_address = address
        return old

    RELAY_SSHD_CONF = """Port 22
ListenAddress {addr}
HostKey {dir}/ssh_host_ed25519_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile {keys}/%u
StrictModes no
UsePAM yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers {user}
"""

    def add_relay(self, user: str) -> None:
        """A VPS on the internet side: Debian's sshd with a config of its own, `user` its account.

        Nothing of nbremote there, no root for the user, no GatewayPorts: what
        `server relay` promises to need. authorize_on_relay sets the user's keys."""
        _run(["ip", "netns", "add", self.relay_ns])
        self._namespaces.append(self.relay_ns)
        _run(["ip", "-n", self.relay_ns, "link", "set", "lo", "up"])
        _run(
            [
                "ip",
                "-n",
                self.cafe_ns,
                "link",
                "add",
                "rl0",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                self.relay_ns,
            ]
        )
        for ns, dev, addr in (
            (self.cafe_ns, "rl0", f"{CAFE_RELAY_SIDE}/26"),
            (self.relay_ns, "eth0", f"{RELAY_ADDR}/26"),
        ):
            _run(["ip", "-n", ns, "addr", "add", addr, "dev", dev])
            _run(["ip", "-n", ns, "link", "set", dev, "up"])
        _run(["ip", "-n", self.relay_ns, "route", "replace", "default", "via", CAFE_RELAY_SIDE])
        _run(["ip", "netns", "exec", self.cafe_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        self.route_via_cafe(f"{RELAY_ADDR.rsplit('.', 1)[0]}.128/26")
        self.assert_island()
        self.relay_dir.mkdir(parents=True, exist_ok=True)
        # sshd reads authorized keys as the user: a folder the user can enter (pytest's is root's only).
        self.relay_keys = Path(tempfile.mkdtemp(prefix="nbr-relaykeys-"))
        os.chmod(self.relay_keys, 0o755)
        key = self.relay_dir / "ssh_host_ed25519_key"
        if not key.exists():
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
        (self.relay_dir / "sshd_config").write_text(
            self.RELAY_SSHD_CONF.format(addr=RELAY_ADDR, dir=self.relay_dir, keys=self.relay_keys, user=user)
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        self.start_relay_sshd()

    def authorize_on_relay(self, user: str, public_keys: list[str]) -> None:
        path = self.relay_keys / user
        path.write_text("".join(k.strip() + "\n" for k in public_keys))
        os.chmod(path, 0o644)

    def start_relay_sshd(self) -> None:
        log = (self.relay_dir / "sshd.log").open("ab")
        self.relay_sshd = self._popen(
            self.relay_ns,
            ["/usr/sbin/sshd", "-D", "-f", str(self.relay_dir / "sshd_config"), "-E", str(self.relay_dir / "sshd.log")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self._wait(lambda: f"{RELAY_ADDR}:22" in self.ns_exec(self.relay_ns, ["ss", "-Htln"]).stdout, "relay sshd")

    def stop_relay_sshd(self) -> None:
        """The relay's sshd and every session it serves, as a restart of its service does."""
        for pid in self._ns_pids(self.relay_ns):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.relay_sshd is not None:
            self.relay_sshd.wait(10)
            self.relay_sshd = None
        self._wait(lambda: not self._ns_pids(self.relay_ns), "relay sshd to go")

    @staticmethod
    def _ns_pids(ns: str) -> list[int]:
        done = _run(["ip", "netns", "pids", ns], check=False)
        return [int(p) for p in done.stdout.split()]

    def relay_listens(self, port: int) -> bool:
        return f"127.0.0.1:{port}" in self.ns_exec(self.relay_ns, ["ss", "-Htln"]).stdout

    def _popen(self, ns: str, argv: list[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{ns}", "--", *argv], stdin=subprocess.DEVNULL, start_new_session=True, **kw
        )

    def ns_exec(self, ns: str, argv: list[str], **kw) -> subprocess.CompletedProcess:
        if "input" not in kw:
            kw["stdin"] = subprocess.DEVNULL
        return subprocess.run(
            ["nsenter", f"--net=/run/netns/{ns}", "--", *argv],
            capture_output=True,
            text=True,
            timeout=kw.pop("timeout", 30),
            **kw,
        )

    def cafe_exec(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        return self.ns_exec(self.cafe_ns, argv, **kw)

    def cafe_laptop(self, argv: list[str], env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        """argv as the laptop's user, the laptop being in the café (on the internet side)."""
        u = self.lab.user(LAPTOP_USER)
        return subprocess.run(
            [
                "nsenter",
                f"--net=/run/netns/{self.cafe_ns}",
                "--",
                "setpriv",
                f"--reuid={u.uid}",
                f"--regid={u.gid}",
                "--init-groups",
                "--",
                *argv,
            ],
            env={**u.env(), **(env or {})},
            cwd=str(u.home),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )

    def cafe_ssh(self, port: int, *args: str) -> subprocess.CompletedProcess:
        """The laptop's key login to the router's WAN address, from the café."""
        return self.cafe_laptop(
            [
                "ssh",
                "-o",
                "BatchMode=yes",
                "-o",
                f"HostName={WAN_ADDR}",
                "-o",
                "HostKeyAlias=192.168.77.2",
                "-o",
                "ConnectTimeout=3",
                "-p",
                str(port),
                "server",
                *args,
            ],
            timeout=30,
        )

    @staticmethod
    def _wait(predicate, what: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise LabError(f"{what} did not come up within {timeout} s")

    def start_miniupnpd(self, pinholes: bool = True) -> None:
        """pinholes=False: a router whose UPnP forwards IPv4 ports but offers no IPv6 pinholes."""
        leases = self.workdir / "miniupnpd.leases"
        leases.unlink(missing_ok=True)  # or old mappings come back
        conf = self.workdir / "miniupnpd.conf"
        conf.write_text(
            MINIUPNPD_CONF.format(
                lease_file=leases,
                # The same file as before IPv6 came to the lab unless an IPv6 home asks for more.
                ipv6="" if not self.ipv6 else "ext_ifname6=wan0" if pinholes else "ipv6_disable=yes",
            )
        )
        log = self.miniupnpd_log.open("ab")
        self.miniupnpd = self._popen(
            self.router_ns,
            ["/usr/sbin/miniupnpd", "-d", "-f", str(conf), "-P", str(self.workdir / "miniupnpd.pid")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self._wait(lambda: "miniupnpd" in self.ns_exec(self.router_ns, ["ss", "-Htlnp"]).stdout, "miniupnpd")

    def stop_miniupnpd(self) -> None:
        if self.miniupnpd and self.miniupnpd.poll() is None:
            os.killpg(self.miniupnpd.pid, signal.SIGTERM)
            self.miniupnpd.wait(10)
        self.miniupnpd = None

    def forwarded_ports(self) -> str:
        return self.ns_exec(self.router_ns, ["nft", "list", "chain", "inet", "filter", "prerouting_miniupnpd"]).stdout

    def assert_island(self) -> None:
        """netlab's island check, widened to the router and the café."""
        lab_ns = {self.lab.server_ns, self.lab.laptop_ns, *self._namespaces}
        for ns in lab_ns:
            ids = {
                e["id"]: e["name"]
                for e in json.loads(_run(["ip", "-n", ns, "-j", "netns", "list"]).stdout or "[]")
                if "id" in e
            }
            for link in json.loads(_run(["ip", "-n", ns, "-j", "link", "show"]).stdout):
                if "link_netnsid" in link and ids.get(link["link_netnsid"]) not in lab_ns:
                    raise AssertionError(f"{ns}/{link['ifname']} has its peer outside the lab")
        root_ids = {
            e["id"]: e["name"] for e in json.loads(_run(["ip", "-j", "netns", "list"]).stdout or "[]") if "id" in e
        }
        for link in json.loads(_run(["ip", "-j", "link", "show"]).stdout):
            if root_ids.get(link.get("link_netnsid", -1)) in lab_ns:
                raise AssertionError(f"root namespace's {link['ifname']} is a peer of a lab link")
        missing = [net for net in BLACKHOLE_NETS if (net, 0) not in root_blackholes()]
        if self.ipv6:
            v6 = json.loads(_run(["ip", "-6", "-j", "route", "show", "type", "blackhole"]).stdout or "[]")
            if not any(route.get("dst") == V6_NET for route in v6):
                missing.append(V6_NET)
        if missing:
            raise AssertionError(f"no blackhole route for {', '.join(missing)} in the root namespace")

    def teardown(self) -> None:
        self.stop_miniupnpd()
        if self.relay_ns in self._namespaces:
            self.stop_relay_sshd()
        if self.relay_keys is not None:
            shutil.rmtree(self.relay_keys, ignore_errors=True)
        for proc in self._procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        srv = self.lab.server_ns
        if Path("/run/netns", srv).exists():
            _run(["ip", "-n", srv, "route", "del", "default"], check=False)
        # A namespace outlives `ip netns del` while a process is in it, and so would its
        # veths: the next test's home would find the server's eth1 still there.
        survivors = []
        for ns in self._namespaces:
            try:
                _kill_until_gone(lambda ns=ns: _netns_pids(ns), f"netns {ns}")
            except LabError as e:
                survivors.append(str(e))
        for ns, dev in ((srv, "eth1"), (self.lab.laptop_ns, "wan1")):
            if Path("/run/netns", ns).exists():
                _run(["ip", "-n", ns, "link", "del", dev], check=False)
        for ns in reversed(self._namespaces):
            # Takes the remaining veths (the laptop's wan1 with its default route included).
            _run(["ip", "netns", "del", ns], check=False)
        self._namespaces.clear()
        if self._v6_blackhole:
            _run(["ip", "-6", "route", "del", "blackhole", V6_NET], check=False)
            self._v6_blackhole = False
        if survivors:
            raise LabError("; ".join(survivors))
