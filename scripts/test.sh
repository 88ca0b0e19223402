#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian/Ubuntu machine, then run it.
# Runs as root: the lab builds network namespaces, test users and a private sshd.
# Arguments are passed to pytest (e.g. `bash scripts/test.sh tests/unit -x`).
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# apt does not start daemons here (and must not on a dev machine): the lab starts its own sshd.
# systemd-container: tests/lab/test_ddns.py boots systemd in systemd-nspawn (tests/lab/systemdlab.py).
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

# Every pytest below gets SIGINT at its default (see the note on the `&` job below).
# With paths or node ids among the arguments, or a -m of the caller's, one pytest runs them.
for arg in "$@"; do
    if [ -e "${arg%%::*}" ] || [[ "$arg" == -m* ]]; then
        exec env --default-signal=INT "$venv/bin/python" -m pytest "$@"
    fi
done

# The whole suite: the tests marked `lab` (tests/lab, and those of tests/security that use the
# lab: one machine-wide lab, which mostly waits on the network, sshd, Jupyter and Slurm) and,
# beside them, every other test (CPU work), at the lowest priority so that the lab's timing
# checks see the machine as when alone. Each pytest prints its own report (the others' after
# the lab's); the run fails if either does.
# A `&` job of a non-interactive shell starts with SIGINT ignored and its children inherit
# that, as does everything under a script run as one: env --default-signal=INT gives it
# back, or the tests that press Ctrl-C in a child (test_docs_output_here.py, test_up.py…)
# would wait for an exit that never comes.
others_log=$(mktemp)
env --default-signal=INT nice -n 19 "$venv/bin/python" -m pytest "$@" --ignore=tests/lab -m "not lab" \
    >"$others_log" 2>&1 &
others=$!
trap 'kill "$others" 2>/dev/null; rm -f "$others_log"' EXIT
lab_rc=0
env --default-signal=INT "$venv/bin/python" -m pytest "$@" tests/lab tests/security -m lab || lab_rc=$?
others_rc=0
wait "$others" || others_rc=$?
trap 'rm -f "$others_log"' EXIT  # it has ended: its pid may be another process's now
echo "=== every test not marked lab, run beside them ==="
cat "$others_log"
exit $((lab_rc ? lab_rc : others_rc))
