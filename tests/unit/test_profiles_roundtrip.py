"""`add` and `remove` keep the user's comments and layout in hosts.toml, byte for byte.

The README invites hand-editing the file; `add` writes through profiles.save (the call
tested here with what add passes it) and `remove` is the real hosts.remove.
"""

from __future__ import annotations

import difflib

from nbremote import hosts, profiles
from nbremote.addresses import Address
from nbremote.profiles import Profile, UpDefaults

HAND_WRITTEN = """# My machines. Edited by hand; nbremote add/remove must keep this.

[hosts.gpubox]   # the box under the desk
addresses = [
    "192.168.1.112",      # LAN first
    "203.0.113.7:22222",  # then the router's forward
]
user = "houser"

# defaults for `nbremote up gpubox`
[hosts.gpubox.up]
dir = "~/projects"    # where the notebooks are
mode = 'lab'

[hosts.cluster]
addresses = ['login.hpc.example.org']
scheduler = "slurm"   # jobs, not tmux

[hosts.cluster.slurm]
partition = "gpu"  # the only one with GPUs
extra = ["--qos=normal"]
"""

NEW = Profile(
    name="newbox",
    addresses=(Address("10.0.0.9", 2222),),
    user="me",
    key="/home/me/.ssh/id_ed25519",
    up=UpDefaults(env="torch"),
)


def _write(isolated) -> None:
    path = profiles.profiles_path()
    path.parent.mkdir(parents=True)
    path.write_text(HAND_WRITTEN)


def test_add_then_remove_gives_back_the_file_byte_for_byte(isolated):
    _write(isolated)
    profiles.save({**profiles.load(), "newbox": NEW})  # what `nbremote add newbox` writes
    added = profiles.profiles_path().read_text()
    assert added.startswith(HAND_WRITTEN), "everything written by hand stays as it was"
    assert profiles.load()["newbox"] == NEW
    hosts.remove("newbox")
    assert profiles.profiles_path().read_text() == HAND_WRITTEN


def test_removing_a_hand_written_profile_keeps_the_others_as_written(isolated):
    _write(isolated)
    hosts.remove("gpubox")
    left = profiles.profiles_path().read_text()
    assert left.startswith("# My machines. Edited by hand; nbremote add/remove must keep this.\n")
    assert HAND_WRITTEN[HAND_WRITTEN.index("[hosts.cluster]") :] in left
    assert list(profiles.load()) == ["cluster"]


def test_adding_again_changes_only_the_lines_that_changed(isolated):
    _write(isolated)
    every = profiles.load()
    gpubox = every["gpubox"]
    changed = Profile(name="gpubox", addresses=gpubox.addresses, user="alice", port=gpubox.port, up=gpubox.up)
    profiles.save({**every, "gpubox": changed})
    after = profiles.profiles_path().read_text()
    diff = [
        line for line in difflib.ndiff(HAND_WRITTEN.splitlines(), after.splitlines()) if line.startswith(("+ ", "- "))
    ]
    assert diff == ['- user = "houser"', '+ user = "alice"']


def test_a_new_file_says_comments_are_kept(isolated):
    profiles.save({"newbox": NEW})
    text = profiles.profiles_path().read_text()
    assert text.startswith(profiles.HEADER)
    assert profiles.load() == {"newbox": NEW}
