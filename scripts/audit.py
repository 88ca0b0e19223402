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

The lock pins some packages twice, for different Pythons (scripts/lock.py): every
pinned release is audited, whichever Python runs this, so pip-audit gets the pins
without their markers, in as many files as a name has pins.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", re.M)


def pins(lock: Path) -> list[tuple[str, str]]:
    """Every pinned (name, version), once, markers left out."""
    return sorted({(name.lower(), version) for name, version in PIN.findall(lock.read_text())})


def layers(pinned: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The pins split so that no file names a package twice."""
    stacked: list[list[tuple[str, str]]] = []
    for name, version in pinned:
        for layer in stacked:
            if all(other != name for other, _ in layer):
                layer.append((name, version))
                break
        else:
            stacked.append([(name, version)])
    return stacked


def pip_audit(layer: list[tuple[str, str]]) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as requirements:
        requirements.write("".join(f"{name}=={version}\n" for name, version in layer))
        requirements.flush()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip_audit",
                "--no-deps",
                "--disable-pip",
                "--progress-spinner",
                "off",
                "--format",
                "json",
                "-r",
                requirements.name,
            ],
            capture_output=True,
            text=True,
        )
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
    found, skipped = [], []
    for layer in layers(pinned):
        versions = dict(layer)
        for dep in pip_audit(layer)["dependencies"]:
            name = dep["name"].lower()
            if dep.get("skip_reason"):
                skipped.append((name, versions.get(name)))
            for vuln in dep.get("vulns", []):
                found.append(
                    f"{dep['name']} {dep.get('version')}: {vuln['id']} "
                    f"(fixed in {', '.join(vuln.get('fix_versions') or ['-'])})"
                )
    unaudited = []
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = {
            pool.submit(latest_release_vulns, name, version): (name, version)
            for name, version in skipped
            if version is not None
        }
        for future in concurrent.futures.as_completed(futures):
            name, version = futures[future]
            try:
                latest, ids = future.result()
            except (OSError, ValueError, KeyError) as exc:
                unaudited.append(f"{name} {version} ({exc})")
                continue
            if ids is None:
                unaudited.append(f"{name} {version} (latest is {latest})")
            found += [f"{name} {version}: {i}" for i in ids or []]
    unaudited += [f"{name} (not pinned in {lock})" for name, version in skipped if version is None]
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
