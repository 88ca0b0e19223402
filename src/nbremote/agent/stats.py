"""What a server is doing: load, memory, disk, GPUs.

The GPU part reads ``nvidia-smi --query-gpu`` / ``--query-compute-apps`` CSV by
its header, not by column position, so captures with extra or reordered
columns (every driver adds some) parse the same. Values nvidia-smi cannot give
("[N/A]", "[Not Supported]", "[GPU requires reset]", "ERR!") become None, and
the reason is kept so a broken GPU is shown as broken rather than as idle.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess

TYPE_CHECKING = False  # typing's import would cost every request; mypy reads these alone
if TYPE_CHECKING:
    from .protocol import Doc

GPU_FIELDS = "index,uuid,name,utilization.gpu,memory.used,memory.total,temperature.gpu"
APP_FIELDS = "gpu_uuid,pid,process_name,used_gpu_memory"
NVIDIA_SMI_TIMEOUT = 10


def _rows(text: str) -> list[dict[str, str]]:
    """CSV with a header into dicts keyed by the field name without its unit."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    reader = csv.reader(lines, skipinitialspace=True)
    header = [name.split(" [")[0].strip() for name in next(reader)]
    return [dict(zip(header, (cell.strip() for cell in row))) for row in reader if row]


def _problem(value: str | None) -> str | None:
    """The text of a value nvidia-smi could not read, or None for a real value."""
    if value is None:
        return None
    if value.startswith("[") and value.endswith("]"):
        return value[1:-1]
    if value in ("ERR!", "N/A", ""):
        return value or "empty"
    return None


def _number(value: str | None) -> float | None:
    if value is None or _problem(value) is not None:
        return None
    try:
        return float(value.split()[0])
    except (ValueError, IndexError):
        return None


def _whole(value: str | None) -> int | None:
    number = _number(value)
    return None if number is None else int(round(number))


def parse_gpus(text: str) -> list[Doc]:
    """GPUs from ``--query-gpu=... --format=csv`` output (with header and units)."""
    gpus: list[Doc] = []
    for position, row in enumerate(_rows(text)):
        index = _whole(row.get("index"))
        problems = sorted(
            {
                p
                for p in (_problem(row.get(k)) for k in ("utilization.gpu", "memory.used", "temperature.gpu"))
                if p is not None and p not in ("N/A", "Not Supported")
            }
        )
        gpus.append(
            {
                "index": position if index is None else index,
                "uuid": row.get("uuid") or None,
                "name": row.get("name") or None,
                "utilization": _whole(row.get("utilization.gpu")),
                "memory_used_mib": _whole(row.get("memory.used")),
                "memory_total_mib": _whole(row.get("memory.total")),
                "temperature_c": _whole(row.get("temperature.gpu")),
                "error": problems[0] if problems else None,
            }
        )
    return gpus


def parse_apps(text: str) -> list[Doc]:
    """Compute processes from ``--query-compute-apps=... --format=csv``."""
    apps: list[Doc] = []
    for row in _rows(text):
        pid = _whole(row.get("pid"))
        if pid is None:
            continue
        name = row.get("process_name")
        apps.append(
            {
                "gpu_uuid": row.get("gpu_uuid") or None,
                "pid": pid,
                "name": None if _problem(name) else name,
                "memory_mib": _whole(row.get("used_gpu_memory")),
            }
        )
    return apps


def _smi(query: str, fields: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["nvidia-smi", "--query-%s=%s" % (query, fields), "--format=csv"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        timeout=NVIDIA_SMI_TIMEOUT,
    )
    return done


def gpu_report() -> Doc:
    """{"available": bool, "reason": why not, "gpus": [...], "apps": [...]}."""
    if shutil.which("nvidia-smi") is None:
        return {"available": False, "reason": "no nvidia-smi", "gpus": [], "apps": []}
    try:
        gpus = _smi("gpu", GPU_FIELDS)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"available": False, "reason": "nvidia-smi failed: %s" % exc, "gpus": [], "apps": []}
    if gpus.returncode != 0:
        # "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver" and kin.
        reason = gpus.stdout.strip() or gpus.stderr.strip() or "exit status %d" % gpus.returncode
        return {"available": False, "reason": reason.splitlines()[0], "gpus": [], "apps": []}
    parsed = parse_gpus(gpus.stdout)
    if not parsed:
        return {"available": False, "reason": "no GPU", "gpus": [], "apps": []}
    try:
        apps = _smi("compute-apps", APP_FIELDS)
        parsed_apps = parse_apps(apps.stdout) if apps.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired):
        parsed_apps = []
    return {"available": True, "reason": None, "gpus": parsed, "apps": parsed_apps}


def parse_meminfo(text: str) -> dict[str, int] | None:
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[name.strip()] = int(parts[0]) * 1024
    total = values.get("MemTotal")
    available = values.get("MemAvailable", values.get("MemFree"))
    if total is None or available is None:
        return None
    return {"total": total, "used": total - available}


def machine() -> Doc:
    """Load, CPU count, memory and the home directory's disk."""
    try:
        load: list[float] | None = list(os.getloadavg())
    except OSError:
        load = None
    try:
        with open("/proc/meminfo") as handle:
            memory = parse_meminfo(handle.read())
    except OSError:
        memory = None
    home = os.path.expanduser("~")
    try:
        disk = os.statvfs(home)
        disk_doc: Doc | None = {
            "path": home,
            "total": disk.f_blocks * disk.f_frsize,
            "free": disk.f_bavail * disk.f_frsize,
        }
    except OSError:
        disk_doc = None
    return {"load": load, "cpus": os.cpu_count(), "memory": memory, "disk": disk_doc}
