"""Make requirements/lock.txt, and check that it installs on every Python the package claims.

usage: python scripts/lock.py            regenerate the lock (keeps current pins where it can)
       python scripts/lock.py --upgrade  regenerate it with the newest releases
       python scripts/lock.py --check    resolve it with pip for each supported Python

One lock serves every Python from requires-python up to NEWEST: uv's universal
resolution writes a pin per Python where they differ, with environment markers
(ipython 9 needs Python 3.11, so 3.10 gets ipython 8), and only wheels, so that no
install compiles anything. uv comes from PyPI (`pip install uv`).

The check is pip's own: for each Python X, the lock's lines that apply on X (its
markers evaluated for X) and the project's requirements go to `pip install --dry-run
--python-version X --only-binary=:all:`, which fails when a pin has no wheel for X,
needs another Python, or conflicts with another pin. pip there evaluates the markers
of the packages' own dependencies for the Python running it, not X, so the lock's own
markers are evaluated here instead. The index is PyPI itself, whatever pip.conf says.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from packaging.markers import Marker
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements" / "lock.txt"
EXTRAS = ("jupyter", "keep-output", "server", "test")
# The newest Python checked. Not 3.14 yet: miniupnpc (the server extra) has no wheel for it,
# so an install there compiles it from source.
NEWEST = (3, 13)
INDEX = "https://pypi.org/simple"


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def supported() -> list[str]:
    """Every minor version requires-python claims, up to NEWEST."""
    low = re.fullmatch(r">=\s*3\.(\d+)", project()["requires-python"].strip())
    if low is None:
        sys.exit(f"scripts/lock.py reads only requires-python '>=3.N', not {project()['requires-python']!r}")
    return [f"3.{minor}" for minor in range(int(low.group(1)), NEWEST[1] + 1)]


def _pip_env() -> dict[str, str]:
    """pip with PyPI as the only index: a machine's pip.conf or find-links must not decide."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k == "PIP_CERT"}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["UV_NO_CONFIG"] = "1"
    return env


def _environment(version: str) -> dict[str, str]:
    return {
        "python_version": version,
        "python_full_version": f"{version}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "os_name": "posix",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
    }


def pins_for(version: str, lock: Path = LOCK) -> list[str]:
    """The lock's `name==version` lines that apply on Linux with Python `version`."""
    chosen = []
    for line in lock.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        pin, _, marker = line.partition(";")
        if not marker.strip() or Marker(marker.strip()).evaluate(_environment(version)):
            chosen.append(pin.strip())
    return chosen


def requirements_for(version: str) -> list[str]:
    """The project's own requirements with its extras, as they apply on Python `version`."""
    meta = project()
    listed = list(meta["dependencies"]) + [r for extra in EXTRAS for r in meta["optional-dependencies"][extra]]
    chosen = []
    for text in listed:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate(_environment(version)):
            requirement.marker = None
            chosen.append(str(requirement))
    return chosen


def check(version: str, lock: Path = LOCK) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as folder:
        wanted = Path(folder) / "requirements.txt"
        wanted.write_text("\n".join(pins_for(version, lock) + requirements_for(version)) + "\n")
        # --target: pip before 23.1 takes --python-version only with it, even for a dry run.
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--ignore-installed",
                "--quiet",
                "--python-version",
                version,
                "--only-binary=:all:",
                "--index-url",
                INDEX,
                "--target",
                str(Path(folder) / "target"),
                "-r",
                str(wanted),
            ],
            capture_output=True,
            text=True,
            env=_pip_env(),
            timeout=900,
        )


def generate(upgrade: bool) -> int:
    uv = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
    if uv is None:
        sys.exit("scripts/lock.py needs uv: `pip install uv`")
    argv = [
        uv,
        "pip",
        "compile",
        "pyproject.toml",
        "--universal",
        "--python-version",
        supported()[0],
        *[f"--extra={extra}" for extra in EXTRAS],
        "--only-binary",
        ":all:",
        "--index-url",
        INDEX,
        "--no-emit-index-url",
        "--no-emit-package",
        "pip",
        "--custom-compile-command",
        "python scripts/lock.py",
        "--output-file",
        str(LOCK.relative_to(REPO)),
    ]
    if upgrade:
        argv.append("--upgrade")
    return subprocess.run(argv, cwd=REPO, env=_pip_env()).returncode


def main(args: list[str]) -> int:
    if args == ["--check"]:
        failed = 0
        for version in supported():
            done = check(version)
            print(f"Python {version}: {'resolves' if done.returncode == 0 else 'FAILS'}")
            if done.returncode:
                failed += 1
                print(done.stderr.strip()[-3000:])
        return 1 if failed else 0
    if args in ([], ["--upgrade"]):
        return generate(upgrade=bool(args))
    sys.exit(__doc__.split("\n\n")[1])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
