"""`nbremote status` without HOST asks what the docs say: every profile and every host with a session."""
from __future__ import annotations

import time

from nbremote import profiles, sessions, status
from nbremote.addresses import Address
from nbremote.profiles import Profile


def _session(host: str) -> sessions.SessionRecord:
    return sessions.SessionRecord(host=host, dir="~", remote_dir="/home/me", local_port=8890, remote_port=8888,
                                  token="t" * 48, pid=4242, mode="lab", updated=time.time())


def test_nothing_known_is_this_machine(isolated):
    assert status.default_hosts() == [None]


def test_every_profile_even_without_a_session(isolated):
    profiles.save({name: Profile(name=name, addresses=(Address("10.0.0.1"),)) for name in ("gpubox", "cluster")})
    sessions.save(_session("me@other"))
    assert status.default_hosts() == ["cluster", "gpubox", "me@other"]


def test_this_machine_too_when_it_has_a_session(isolated):
    profiles.save({"gpubox": Profile(name="gpubox", addresses=(Address("10.0.0.1"),))})
    sessions.save(_session(""))
    assert status.default_hosts() == ["gpubox", None]
