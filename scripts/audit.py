"""Audit the locked dependency set against known vulnerabilities; exit 1 on any.

usage: python scripts/audit.py requirements/lock.txt

pip-audit asks PyPI's vulnerability service about each pinned release
(https://pypi.org/pypi/NAME/VERSION/json). Where that per-release document is
not served (some PyPI mirrors and proxies only serve the project's document),
pip-audit skips the package; this script then reads the project's document
(https://pypi.org/pypi/NAME/json), whose vulnerability list is for its latest
release: that is an audit of the pin exactly when the pin is the latest
release. Anything still unaudited is listed; NBREMOTE_REQUIRE_AUDIT=1 makes
that a failure too.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", re.M)


def pins(lock: Path) -> dict[str, str]:
    return {name.lower(): version for name, version in PIN.findall(lock.read_text())}


def pip_audit(lock: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "pip_audit", "--no-deps", "--disable-pip", "--progress-spinner",
                           "off", "--format", "json", "-r", str(lock)], capture_output=True, text=True)
    if done.returncode not in (0, 1) or not done.stdout.strip():
        sys.exit(f"pip-audit failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


def latest_release_vulns(name: str, version: str) -> tuple[str, list[str] | None]:
    """(latest version, vulnerability ids) from the project's document; ids None when not the pin."""
    with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=30) as response:
        doc = json.load(response)
    latest = doc["info"]["version"]
    if latest != version:
        return latest, None
    return latest, [v.get("id", "?") for v in doc.get("vulnerabilities") or [] if not v.get("withdrawn")]


def main(lock: Path) -> int:
    pinned = pins(lock)
    report = pip_audit(lock)
    found, skipped = [], []
    for dep in report["dependencies"]:
        if dep.get("skip_reason"):
            skipped.append(dep["name"].lower())
        for vuln in dep.get("vulns", []):
            found.append(f"{dep['name']} {dep.get('version')}: {vuln['id']} (fixed in {', '.join(vuln.get('fix_versions') or ['-'])})")
    unaudited = []
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = {pool.submit(latest_release_vulns, name, pinned[name]): name for name in skipped if name in pinned}
        for future in concurrent.futures.as_completed(futures):
            name = futures[future]
            try:
                latest, ids = future.result()
            except (OSError, ValueError, KeyError) as exc:
                unaudited.append(f"{name} {pinned[name]} ({exc})")
                continue
            if ids is None:
                unaudited.append(f"{name} {pinned[name]} (latest is {latest})")
            found += [f"{name} {pinned[name]}: {i}" for i in ids or []]
    unaudited += [f"{name} (not pinned in {lock})" for name in skipped if name not in pinned]
    audited = len(pinned) - len(unaudited)
    print(f"audit: {audited} of {len(pinned)} pinned dependencies checked, {len(found)} known vulnerabilities")
    for line in sorted(found):
        print(f"  vulnerable: {line}")
    for line in sorted(unaudited):
        print(f"  not audited: {line}")
    if found:
        return 1
    if unaudited and os.environ.get("NBREMOTE_REQUIRE_AUDIT") == "1":
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.split("\n\n")[1])
    sys.exit(main(Path(sys.argv[1])))
