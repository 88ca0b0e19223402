"""Guarantee 5: the laptop's secrets stay private.

After a full day's use (add with a password, up with a keeper, ls, status, down),
every directory nbremote made on the laptop is 0700 and every file in it is
readable by the user alone; `ls` and `status` show a token only with
--show-token; and a -v log of every command holds neither the token nor the
password typed for `add`.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess

import pytest
from netlab import ALICE, LAPTOP_USER, SERVER_ADDR


@pytest.fixture
def alice_password(alice_password, lab):
    yield alice_password
    subprocess.run(["rm", "-rf", str(lab.user(LAPTOP_USER).home / ".config" / "nbremote")], check=True)


def verbose(lab, *args: str, **kw) -> subprocess.CompletedProcess:
    done = lab.nbremote("-v", *args, timeout=120, **kw)
    assert done.returncode == 0, done.stderr
    return done


def test_laptop_files_are_private_and_logs_hold_no_secret(lab, alice_password):
    home = lab.user(LAPTOP_USER).home
    # A laptop without a key: `add` makes one and installs it over a password login.
    for name in ("id_ed25519", "id_ed25519.pub"):
        (home / ".ssh" / name).unlink()
    add = lab.laptop_exec(
        [
            "sshpass",
            "-p",
            alice_password,
            *lab.nbremote_argv("-v", "add", "gpubox", "--address", SERVER_ADDR, "--user", ALICE),
        ],
        env=lab.nbremote_env(),
        timeout=60,
    )
    assert add.returncode == 0, add.stderr
    assert "(key installed)" in add.stderr

    up = verbose(lab, "up", "gpubox", "--no-browser", "--detach", "--json")
    url = json.loads(up.stdout)["url"]
    token = re.search(r"token=([0-9a-f]+)", url).group(1)
    ls = verbose(lab, "ls", "gpubox")
    ls_json = verbose(lab, "ls", "gpubox", "--json")
    status = verbose(lab, "status", "gpubox")
    status_json = verbose(lab, "status", "gpubox", "--json")
    shown = verbose(lab, "ls", "gpubox", "--show-token")
    shown_status = verbose(lab, "status", "gpubox", "--show-token")

    # Masked by default, in full only on request; the prefix shows which server it is.
    masked = url.replace(token, token[:4] + "…")
    for done in (ls, ls_json, status, status_json):
        assert token not in done.stdout, done.stdout
    assert masked in ls.stdout and masked in status.stdout, ls.stdout + status.stdout
    assert [s["url"] for s in json.loads(ls_json.stdout)["servers"]] == [masked]
    assert [s["url"] for h in json.loads(status_json.stdout)["hosts"] for s in h["servers"]] == [masked]
    assert url in shown.stdout and url in shown_status.stdout

    state = home / ".local" / "state" / "nbremote"
    check_private_tree(lab)
    down = verbose(lab, "down", "gpubox")
    # No -v log holds the token or the password; up prints the URL because it was asked for it.
    for done in (add, up, ls, ls_json, status, status_json, shown, shown_status, down):
        assert token not in done.stderr and alice_password not in done.stdout + done.stderr, done.stderr
        assert "[" in done.stderr, "expected -v log lines"
    for path in state.rglob("*.log"):
        text = path.read_text(errors="replace")
        assert token not in text and alice_password not in text, path


def check_private_tree(lab) -> None:
    """Every directory and file nbremote keeps on the laptop: dirs 0700, files without group/other bits."""
    user = lab.user(LAPTOP_USER)
    roots = [
        user.home / ".config" / "nbremote",
        user.home / ".local" / "state" / "nbremote",
        f"/tmp/nbremote-{user.uid}",
    ]
    modes = {}
    for root in roots:
        info = os.lstat(root)
        assert info.st_uid == user.uid and stat.S_IMODE(info.st_mode) == 0o700, (root, oct(info.st_mode))
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                path = os.path.join(folder, name)
                info = os.lstat(path)
                mode = stat.S_IMODE(info.st_mode)
                modes[path] = mode
                assert info.st_uid == user.uid, path
                if stat.S_ISDIR(info.st_mode):
                    assert mode == 0o700, (path, oct(mode))
                else:
                    assert mode & 0o077 == 0, (path, oct(mode))
    names = {os.path.basename(p) for p in modes}
    # What the guarantee names: the profile file, the pinned known_hosts, the session and keeper
    # state, and the control sockets (one per master).
    assert {"hosts.toml", "known_hosts", "sessions.json"} <= names, sorted(names)
    assert any(stat.S_ISSOCK(os.lstat(p).st_mode) for p in modes if p.startswith(roots[2])), modes
    assert any("keeper" in p for p in modes), sorted(modes)
