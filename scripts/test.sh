#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian/Ubuntu machine, then run it.
# Runs as root: the lab builds network namespaces, test users and a private sshd.
# Arguments are passed to pytest (e.g. `bash scripts/test.sh tests/unit -x`).
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# apt does not start daemons here (and must not on a dev machine): the lab starts its own sshd.
# systemd-container: tests/lab/test_ddns_timer.py boots systemd in systemd-nspawn (tests/lab/systemdlab.py).
apt-get install -y -qq --no-install-recommends \
    openssh-server openssh-client sshpass tmux iproute2 nftables procps psmisc \
    python3 python3-venv ca-certificates \
    sshpass iptables ufw miniupnpd miniupnpd-nftables slurm-wlm munge libpam-slurm-adopt \
    bind9 bind9-dnsutils systemd-container \
    sudo zsh fish >/dev/null  # sudo: the root hints are run through it; zsh, fish: the completion scripts

# Chromium for the browser tests: Debian's package where apt has one. Ubuntu has it only
# as a snap (its chromium-browser package installs the snap), so there the build of
# Playwright's own installer goes into the lab folder below, once the venv has Playwright.
if apt-cache show chromium 2>/dev/null | grep -q '^Filename:'; then
    apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

# The lab's users (the laptop and server accounts) must be able to read this venv,
# so it lives outside root's home and is built from the system python3.
venv=/opt/nbremote-lab/venv
[ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv "$venv"
# The dependency set is the locked one (requirements/lock.txt, made by scripts/lock.py), and it
# is audited against known vulnerabilities before the tests run.
"$venv/bin/pip" install -q --disable-pip-version-check -c requirements/lock.txt -e '.[test,jupyter]'
if [ ! -x /usr/bin/chromium ]; then
    PLAYWRIGHT_BROWSERS_PATH=/opt/nbremote-lab/ms-playwright "$venv/bin/python" -m playwright install --with-deps chromium
fi
# `up --keep-output`'s Jupyter (tests/lab/test_keep_output.py): a venv of its own, as a user
# makes one, so that every other test keeps a Jupyter without server-side execution.
keep=/opt/nbremote-lab/keep-output
[ -x "$keep/bin/python" ] || /usr/bin/python3 -m venv "$keep"
"$keep/bin/pip" install -q --disable-pip-version-check -c requirements/lock.txt jupyterlab notebook ipykernel \
    'jupyter-server-nbmodel[lab]'
chmod -R a+rX /opt/nbremote-lab
"$venv/bin/python" scripts/audit.py requirements/lock.txt

exec "$venv/bin/python" -m pytest "$@"
