"""The agent's GPU and /proc parsers over real nvidia-smi captures (tests/fixtures/nvidia-smi)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nbremote import status
from nbremote.agent import stats

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nvidia-smi"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_one_gpu_with_every_field_is_read_by_header():
    [gpu] = stats.parse_gpus(fixture("l40s-load.query-gpu.csv"))
    assert gpu == {
        "index": 0,
        "uuid": "GPU-00000000-0000-0000-0000-000000000000",
        "name": "NVIDIA L40S",
        "utilization": 9,
        "memory_used_mib": 1235,
        "memory_total_mib": 46068,
        "temperature_c": 54,
        "error": None,
    }


def test_several_gpus_without_uuid_column():
    gpus = stats.parse_gpus(fixture("v100x8.query-gpu.csv"))
    assert [g["index"] for g in gpus] == list(range(8))
    assert {g["name"] for g in gpus} == {"Tesla V100-SXM2-32GB"}
    assert (gpus[6]["utilization"], gpus[6]["memory_used_mib"], gpus[6]["temperature_c"]) == (100, 13928, 51)
    assert gpus[5]["memory_total_mib"] == 32764
    assert all(g["uuid"] is None and g["error"] is None for g in gpus)


def test_a_gpu_in_an_error_state_is_an_error_not_an_idle_gpu():
    [gpu] = stats.parse_gpus(fixture("reset-required.query-gpu.csv"))
    assert gpu["error"] == "GPU requires reset"
    assert gpu["utilization"] is None and gpu["temperature_c"] is None
    assert gpu["memory_used_mib"] == 0


def test_process_lists():
    apps = stats.parse_apps(fixture("l40s-load.compute-apps.csv"))
    assert [(a["pid"], a["name"], a["memory_mib"]) for a in apps] == [(20037, "ffmpeg", 538), (20038, "ffmpeg", 681)]
    many = stats.parse_apps(fixture("l40x8.compute-apps.csv"))
    assert len(many) == 7 and len({a["gpu_uuid"] for a in many}) == 7
    assert many[-1] == {
        "gpu_uuid": "GPU-ecca4f34-d4ac-7e00-5b68-246d89bc352b",
        "pid": 88098,
        "name": "./build/bin/llama-server",
        "memory_mib": 26076,
    }
    assert stats.parse_apps(fixture("l40s-idle.compute-apps.csv")) == []


@pytest.mark.parametrize("text", ["", "\n", "index, name\n"])
def test_empty_output_is_no_gpus(text):
    assert stats.parse_gpus(text) == []


def test_not_supported_values_are_missing_not_errors():
    [gpu] = stats.parse_gpus(
        "index, name, utilization.gpu [%], memory.used [MiB], temperature.gpu\n0, Quadro, [Not Supported], [N/A], 40\n"
    )
    assert (gpu["utilization"], gpu["memory_used_mib"], gpu["temperature_c"], gpu["error"]) == (None, None, 40, None)


def test_jobs_gpu_memory_is_the_sum_over_the_jobs_processes(monkeypatch):
    from nbremote.agent import jobs

    apps = stats.parse_apps(fixture("l40x8.compute-apps.csv"))
    monkeypatch.setattr(jobs.jupyter, "_descendants", lambda pid: {72205: [72210, 72211, 72212, 72213]}.get(pid, []))
    usage = jobs.gpu_usage([{"name": "train", "pid": 72205}, {"name": "idle", "pid": 1}], apps)
    assert usage == {"train": 41502 + 41510 + 41510 + 41470, "idle": 0}


def test_meminfo():
    text = "MemTotal:       16303448 kB\nMemFree:          812340 kB\nMemAvailable:    9011220 kB\n"
    assert stats.parse_meminfo(text) == {"total": 16303448 * 1024, "used": (16303448 - 9011220) * 1024}
    assert stats.parse_meminfo("nonsense") is None


def _host(gpu: dict) -> status.HostStatus:
    return status.HostStatus(
        host="gpubox",
        label="gpubox",
        reachable=True,
        seconds=0.1,
        path="10.0.0.2:22",
        rtt=0.002,
        machine={"load": [0.5, 0.4, 0.3], "cpus": 16},
        gpu=gpu,
    )


def test_render_names_the_process_that_uses_a_gpu():
    gpus = stats.parse_gpus(fixture("l40s-load.query-gpu.csv"))
    apps = stats.parse_apps(fixture("l40s-load.compute-apps.csv"))
    apps[0]["owner"] = "job encode"
    lines = status.render([_host({"available": True, "gpus": gpus, "apps": apps})])
    assert lines[0] == "gpubox  via 10.0.0.2:22 2 ms   load 0.50/16"
    assert lines[1] == (
        "  GPU0 NVIDIA L40S    9%  1.2/45.0 GB  54°C  job encode (pid 20037, 0.5 GB), ffmpeg (pid 20038, 0.7 GB)"
    )


@pytest.mark.parametrize(
    "reason, line",
    [
        ("no nvidia-smi", "  no GPU (no nvidia-smi)"),
        (
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
            "  no GPU: NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
        ),
    ],
)
def test_render_without_a_gpu_says_so_plainly(reason, line):
    assert status.render([_host({"available": False, "reason": reason, "gpus": [], "apps": []})])[1] == line


def test_render_an_unreachable_host():
    dead = status.HostStatus(host="x", label="x", reachable=False, seconds=3, error="cannot reach x (timed out)")
    assert status.render([dead]) == ["x  unreachable: cannot reach x (timed out)"]


def test_sparkline_and_history():
    assert status.sparkline([0, 50, 100, None]) == "▁▄█ "
    history = status.History(size=3)
    gpus = stats.parse_gpus(fixture("v100x8.query-gpu.csv"))
    for _ in range(4):
        history.add([_host({"available": True, "gpus": gpus, "apps": []})])
    assert history.series("gpubox", 6, "util") == [100, 100, 100]
    assert history.series("gpubox", 6, "mem") == [43, 43, 43]


def test_sparkline_scale_and_gaps():
    assert status.sparkline([]) == ""
    assert status.sparkline([0, 12, 13, 25, 26, 38, 51, 64, 76, 89, 100]) == "▁▁▂▂▃▄▅▆▇██"  # eighths of 0-100 %
    assert status.sparkline([None, 100, None]) == " █ "
    assert status.sparkline([-5, 250]) == "▁█"  # out-of-range values stay on the scale


def test_watch_lines_draw_each_gpus_history_with_a_gap_where_the_host_did_not_answer():
    gpus = stats.parse_gpus(fixture("v100x8.query-gpu.csv"))
    busy = _host({"available": True, "gpus": gpus, "apps": []})
    idle_gpus = [dict(g, utilization=0, memory_used_mib=4) for g in gpus]
    idle = _host({"available": True, "gpus": idle_gpus, "apps": []})
    dead = status.HostStatus(host="gpubox", label="gpubox", reachable=False, seconds=5, error="timed out")
    history = status.History(size=4)
    for sample in (idle, busy, dead, busy, idle):
        history.add([sample])
    assert history.series("gpubox", 6, "util") == [100, None, 100, 0]  # the oldest sample fell off
    lines = status.render([idle], history)
    assert lines[7] == "  GPU6 Tesla V100-SXM2-32GB    0%  0.0/32.0 GB  51°C  util █ █▁  mem ▄ ▄▁"
    assert status.render([dead], history) == ["gpubox  unreachable: timed out"]
