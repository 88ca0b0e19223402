"""`nbremote server check`: what is safe, what is not, and the command that fixes it.

Each check is a small function returning Check rows; none changes anything.
Those that need root (sshd -T loads host keys; nft reads the ruleset; other
users' sockets) say so instead of guessing when run without it.
"""

from __future__ import annotations

from typing import Callable, Iterable

from nbremote.errors import NbremoteError
from nbremote.server import netinfo, rootcmd, system
from nbremote.server.sshd import Sshd, first, listed
from nbremote.verdicts import FAIL, PASS, SKIP, WARN, Check, summary

# server/cli.py reads these from here.
__all__ = ["FAIL", "PASS", "SKIP", "WARN", "Check", "summary"]

WEAK_KEX = (
    "ecdh-sha2-nistp",
    "diffie-hellman-group1-",
    "diffie-hellman-group14-sha1",
    "diffie-hellman-group-exchange-sha1",
)
WEAK_CIPHER = ("-cbc", "3des", "arcfour", "blowfish", "cast128")
JUPYTER_NAMES = ("jupyter", "jupyter-lab", "jupyter-noteboo", "jupyter-server", "ipykernel")


def _harden() -> str:
    return rootcmd.command("server", "harden", "--allow-user", "YOU")


def sshd_checks(sshd: Sshd, root: bool) -> list[Check]:
    if sshd.binary is None:
        return [Check("openssh-server", FAIL, "sshd is not installed", "sudo apt-get install openssh-server")]
    rows = [Check("openssh-server", PASS, sshd.binary)]
    if not root:
        return rows + [Check("sshd settings", SKIP, "sshd -T reads the host keys", rootcmd.command("server", "check"))]
    broken = sshd.validate()
    if broken:
        return rows + [
            Check("sshd config", FAIL, broken.splitlines()[-1], f"fix {sshd.config}; `sudo sshd -t` shows the error")
        ]
    pid = sshd.pid()
    rows.append(
        Check(
            "sshd running",
            PASS if pid else FAIL,
            f"pid {pid}" if pid else "no live pid in its PidFile",
            None if pid else "sudo service ssh start",
        )
    )
    s = sshd.effective()
    ports = s.get("port", ["22"])
    rows.append(
        Check(
            "port",
            WARN if ports == ["22"] else PASS,
            ", ".join(ports),
            None if ports != ["22"] else rootcmd.command("server", "harden", "--port", "22222") + "  (fewer scanners)",
        )
    )

    def yes_no(key: str, want: str, bad_status: str = FAIL) -> Check:
        value = first(s, key)
        return Check(key, PASS if value == want else bad_status, value, None if value == want else _harden())

    rows += [
        yes_no("passwordauthentication", "no"),
        yes_no("kbdinteractiveauthentication", "no"),
        yes_no("pubkeyauthentication", "yes"),
    ]
    root_login = first(s, "permitrootlogin")
    rows.append(
        Check(
            "permitrootlogin",
            PASS
            if root_login == "no"
            else WARN
            if root_login in ("prohibit-password", "without-password", "forced-commands-only")
            else FAIL,
            root_login,
            None if root_login == "no" else _harden(),
        )
    )
    users = listed(s, "allowusers")
    rows.append(
        Check(
            "allowusers",
            PASS if users else WARN,
            " ".join(users) or "every account may log in",
            None if users else _harden(),
        )
    )
    for key, weak, status in (
        ("kexalgorithms", WEAK_KEX, WARN),
        ("ciphers", WEAK_CIPHER, FAIL),
        ("macs", ("sha1", "md5", "umac-64", "hmac-sha2-256,", "hmac-sha2-512,"), WARN),
    ):
        values = listed(s, key)
        bad = [v for v in values if any(w in v + "," for w in weak) or (key == "macs" and "-etm@" not in v)]
        rows.append(
            Check(
                key,
                status if bad else PASS,
                f"weak: {', '.join(bad)}" if bad else ", ".join(values),
                _harden() if bad else None,
            )
        )
    keys = listed(s, "hostkeyalgorithms")
    others = [k for k in keys if not k.startswith("ssh-ed25519")]
    rows.append(
        Check(
            "host keys",
            WARN if others else PASS,
            f"also offers {', '.join(others[:3])}{'…' if len(others) > 3 else ''}" if others else "ed25519 only",
            _harden() if others else None,
        )
    )
    return rows


def tool_checks(which: Callable[[str], str | None] = system.which) -> list[Check]:
    rows = []
    for name, fix in (("python3", "sudo apt-get install python3"), ("tmux", "sudo apt-get install tmux")):
        path = which(name)
        rows.append(Check(name, PASS if path else FAIL, path or "not found", None if path else fix))
    jupyter = which("jupyter-lab") or which("jupyter")
    rows.append(
        Check(
            "jupyter",
            PASS if jupyter else WARN,
            jupyter or "not on this PATH (nbremote also finds it in a user's login PATH or --env)",
            None if jupyter else "pip install jupyterlab  (as the user who runs notebooks)",
        )
    )
    return rows


def listener_checks(items: Iterable[netinfo.Listener], ssh_ports: set[int], root: bool) -> list[Check]:
    rows = []
    for item in sorted(items, key=lambda i: (i.port, i.address)):
        if item.loopback:
            continue
        where = f"{item.address}:{item.port}" + (f" {item.process} (pid {item.pid})" if item.process else "")
        if item.process and item.process.startswith(JUPYTER_NAMES):
            rows.append(
                Check(
                    "listener",
                    FAIL,
                    f"{where}: Jupyter reachable from the network",
                    f"kill {item.pid} and start it with --ip=127.0.0.1 (`nbremote up` does)",
                )
            )
        elif item.port in ssh_ports or item.process == "sshd":
            rows.append(Check("listener", PASS, f"{where} (ssh)"))
        else:
            rows.append(
                Check(
                    "listener",
                    WARN,
                    f"{where}: reachable unless the firewall blocks it"
                    + ("" if item.process or root else " (owner visible to root only)"),
                    rootcmd.command("server", "firewall"),
                )
            )
    return rows


def network_checks(lan: list[str], wan: dict | None, mapping: str | None, router: str | None) -> list[Check]:
    rows = [Check("lan addresses", PASS if lan else WARN, ", ".join(lan) or "none", None if lan else "check `ip addr`")]
    if wan:
        rows.append(Check("wan address", PASS, f"{wan['address']} ({wan['source']})"))
    else:
        rows.append(Check("wan address", WARN, "unknown", "nbremote server wan-ip"))
    if router is None:
        rows.append(
            Check(
                "router mapping",
                WARN,
                "no UPnP router answered",
                "nbremote server expose  (prints what to enter in the router's page)",
            )
        )
    else:
        rows.append(
            Check(
                "router mapping",
                PASS if mapping else WARN,
                mapping or f"{router}: no mapping to this ssh port",
                None if mapping else rootcmd.command("server", "expose"),
            )
        )
    return rows


def safe(fn: Callable[[], list[Check]], name: str) -> list[Check]:
    """One failing check must not hide the others."""
    try:
        return fn()
    except (NbremoteError, OSError) as exc:
        return [Check(name, FAIL, getattr(exc, "message", str(exc)))]
