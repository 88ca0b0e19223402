"""harden's guard as a real process: it puts files back only when harden goes
away without saying it is done. (With sshd, killed at each step: tests/security.)"""

from __future__ import annotations

from nbremote.server.files import Original, atomic_write
from nbremote.server.guardpipe import Guard


def _dead_harden(guard: Guard) -> None:
    """What the kernel does when harden is killed: its end of the pipe closes."""
    guard.proc.stdin.close()
    guard.proc.wait(timeout=30)


def test_files_go_back_byte_for_byte_when_harden_dies(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    main = etc / "sshd_config"
    main.write_bytes(b"Port 22\n")
    main.chmod(0o600)
    dropin = etc / "00-nbremote.conf"
    backup = etc / "backup"
    guard = Guard.start()
    guard.expect(None, [Original.read(main), Original.read(dropin)], backup=backup)
    backup.mkdir()
    (backup / "manifest.json").write_text("{}")
    atomic_write(main, b"Include x\nPort 22\n")
    dropin.write_text("Port 22222\n")
    (etc / ".00-nbremote.conf.abc.nbremote-tmp").write_text("half")
    _dead_harden(guard)
    assert main.read_bytes() == b"Port 22\n" and oct(main.stat().st_mode & 0o777) == "0o600"
    assert sorted(p.name for p in etc.iterdir()) == ["sshd_config"]


def test_the_verification_key_is_taken_out_when_harden_dies_during_the_login(tmp_path):
    keys = tmp_path / "authorized_keys"
    keys.write_bytes(b"ssh-ed25519 AAAA laptop")
    original = Original.read(keys)
    added = b"ssh-ed25519 AAAA laptop\nrestrict ssh-ed25519 BBBB nbremote-verify-1234\n"
    key_dir = tmp_path / "nbremote-verify-x"
    key_dir.mkdir()
    guard = Guard.start()
    guard.expect(None, [], backup=None)
    guard.verify_key(original, added, "nbremote-verify-1234", key_dir)
    keys.write_bytes(added)
    _dead_harden(guard)
    assert keys.read_bytes() == b"ssh-ed25519 AAAA laptop" and not key_dir.exists()


def test_nothing_is_touched_once_harden_says_it_is_done(tmp_path):
    conf = tmp_path / "sshd_config"
    conf.write_bytes(b"old\n")
    guard = Guard.start()
    guard.expect(None, [Original.read(conf)], backup=None)
    conf.write_bytes(b"new\n")
    guard.done()
    assert guard.proc.returncode == 0 and conf.read_bytes() == b"new\n"
