"""`nbremote status` without HOST asks what the docs say: every profile and every host with a session."""

from __future__ import annotations

import time
from dataclasses import replace

from nbremote import profiles, sessions, status
from nbremote.addresses import Address
from nbremote.profiles import Profile


def _session(host: str) -> sessions.SessionRecord:
    return sessions.SessionRecord(
        host=host,
        dir="~",
        remote_dir="/home/me",
        local_port=8890,
        remote_port=8888,
        token="t" * 48,
        pid=4242,
        mode="lab",
        updated=time.time(),
    )


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


def test_status_shows_the_extra_forwards_of_a_session(isolated):
    sessions.save(replace(_session("gpubox"), forwards=((16006, 6006),)))
    servers, _ = status._with_urls(
        [
            {"dir": "/home/me", "port": 8888, "pid": 4242, "running": True, "kernels": 0, "busy": 0, "mode": "lab"},
            {"dir": "/srv/other", "port": 8889, "pid": 4343, "running": True, "kernels": 0, "busy": 0, "mode": "lab"},
        ],
        [],
        "gpubox",
        False,
    )
    assert [s["forwards"] for s in servers] == [[{"local_port": 16006, "remote_port": 6006}], []]
    shown = status.HostStatus(host="gpubox", label="gpubox", reachable=True, seconds=0.1, servers=servers)
    lines = status.render([shown])
    assert (
        lines[lines.index(next(x for x in lines if "Jupyter  /home/me" in x)) + 1]
        == "  forward  localhost:16006 → gpubox:6006"
    )
    assert sum("forward  " in line for line in lines) == 1
    assert shown.to_json()["servers"][0]["forwards"] == [{"local_port": 16006, "remote_port": 6006}]
