"""nbremote's start-up benchmark on the lab, at several round-trip times.

    sudo /opt/nbremote-lab/venv/bin/python bench/run.py [--reps 5] [--rtts 0,20,100] [--out bench/results]

Builds one Lab (tests/lab/netlab.py): a laptop and a server namespace joined
by a DelayLink (tests/lab/delaylink.py), a user-space relay between two TUN
devices that holds every packet rtt/2 each way. 0 ms is the same relay with
no hold, so all points share one path. For each round-trip time it measures,
``reps`` times each and interleaved, the time from starting a command on the
laptop to the first HTTP answer through the tunnel for:

  nbremote cold           no Jupyter on the server, no master, nothing remembered
  nbremote warm+master    Jupyter running, the previous `up`'s master still
                          alive and the session remembered; the keeper that
                          `up --detach` left is stopped and the forward
                          cancelled first (else the port answers before the
                          command even starts, or the keeper restores it)
  nbremote warm           Jupyter running, keeper stopped, the master ended
                          (`ssh -O exit`)
  manual recipe           ssh server "bash -lc 'tmux new -d -s nb \"jupyter lab
                          --no-browser --port=8889\"'" && ssh -N -L P:localhost:8889 server
  jupyter-forward         PyPI jupyter-forward 2022.9.10 (its own venv)

and the floors measured the same way: one bare ssh login (`ssh -o
ControlMaster=no server true`, to its exit), Jupyter's own start-up on the
server (exec of jupyter-lab to its first 200, polled inside the server
namespace), one round trip (TCP connect to the server's port 22). Plus the
cost of starting any command in the lab (nsenter + setpriv + `true`) and of
starting the nbremote client (`python -m nbremote --version`), for the analysis.

"First HTTP answer": a poller (bench/probe.py, in the laptop namespace, as the
laptop user) starts a GET /api/status without a token every 10 ms, each
attempt in its own thread; the first response line from Jupyter (403 without
a token) is the moment the tunnel and Jupyter answered. The token parsed from
the method's output is then checked with one more GET, which must give 200.
The time each method prints its URL is taken from its stdout, read line by
line with time stamps. Every clock is CLOCK_MONOTONIC (time.monotonic()),
which all processes share.

SSH connections per method: "Accepted publickey" lines the lab's sshd (-E log)
added during the run.

Throughput: a 200 MB download from a sendfile() HTTP server on the server's
loopback, through a forward that nbremote's own master carries (`ssh -O
forward`, as nbremote adds it) against a plain `ssh -N -L`, and direct on the
server's loopback; and 50 sequential GET /api/status (a new connection each)
through nbremote's forward of Jupyter against a plain `ssh -N -L` to it.

Raw samples go to OUT/results.json; bench/report.py renders docs/benchmarks.md
and docs/benchmarks-up.png from it (run.py calls it when
/opt/nbremote-lab/benchvenv, which has matplotlib, exists).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests" / "lab"))

import delaylink  # noqa: E402
import netlab  # noqa: E402
from netlab import ALICE, LAB_PYTHON, LAB_VENV, LAPTOP_USER, SERVER_ADDR  # noqa: E402

PROBE_SRC = (HERE / "probe.py").read_text()
JF_VENV = Path("/opt/nbremote-lab/jf")
JF = JF_VENV / "bin" / "jupyter-forward"
JF_VERSION = "2022.9.10"
BENCH_VENV = Path("/opt/nbremote-lab/benchvenv")

PORT_NB = 18888  # nbremote's local port (--port), every nbremote run
PORT_MANUAL = 18889  # the manual recipe's ssh -L
PORT_JF = 18890  # jupyter-forward --port
PORT_PLAIN = 18891  # plain ssh -L to nbremote's Jupyter (GETs)
PORT_DL_NB = 18892  # blob server through nbremote's master
PORT_DL_PLAIN = 18893  # blob server through a plain ssh -L
MANUAL_REMOTE = 8889  # the recipe's Jupyter port on the server
FLOOR_JUPYTER = 18900  # server-side port of the Jupyter start-up floor
BLOB_PORT = 18950  # server-side port of the blob server
BLOB_BYTES = 200 * 1000 * 1000
GETS = 50
POLL_INTERVAL = 0.01

NB_URL = re.compile(r"^\s*(http://127\.0\.0\.1:\d+/\S*token=([A-Za-z0-9]+))")
JF_URL = re.compile(r"Jupyter Lab URL:\s*(http\S*token=([A-Za-z0-9]+)\S*)")
MANUAL_SCRIPT = (
    'ssh server "bash -lc \'tmux new -d -s nb \\"jupyter lab --no-browser --port=%d\\"\'" '
    "&& exec ssh -N -L %d:localhost:%d server" % (MANUAL_REMOTE, PORT_MANUAL, MANUAL_REMOTE)
)

METHODS = ("nbremote cold", "nbremote warm+master", "nbremote warm", "manual recipe", "jupyter-forward")
FLOORS = ("ssh login", "jupyter start-up", "round trip")
INFO = ("launch overhead", "nbremote client start")


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Lines:
    """Reads a text stream in a thread; every line gets its arrival time."""

    def __init__(self, stream):
        self.items: list[tuple[float, str]] = []
        self.eof = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream) -> None:
        try:
            for line in iter(stream.readline, ""):
                with self._cond:
                    self.items.append((time.monotonic(), line.rstrip("\n")))
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        with self._cond:
            self.eof = True
            self._cond.notify_all()

    def wait_for(self, pred, timeout: float):
        """First (time, line) with pred(line) true; None on timeout or EOF."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for t, line in self.items[seen:]:
                    if pred(line):
                        return t, line
                seen = len(self.items)
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    return None
                self._cond.wait(left)

    def rel(self, t0: float, limit: int = 60) -> list[list]:
        with self._cond:
            return [[round(t - t0, 4), line] for t, line in self.items[:limit]]


def _stop(p: subprocess.Popen | None, sig=signal.SIGTERM, wait: float = 5.0) -> None:
    """End a Popen that leads its own session, and its group."""
    if p is None:
        return
    if p.poll() is None:
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(wait)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(5)
    for s in (p.stdin, p.stdout, p.stderr):
        try:
            if s:
                s.close()
        except OSError:
            pass


def _cmd_version(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except Exception as e:  # noqa: BLE001
        return f"unknown ({e})"


class Bench:
    def __init__(self, lab: netlab.Lab, args):
        self.lab = lab
        self.args = args
        self.blob_dir: Path | None = None
        self.blob_server: subprocess.Popen | None = None

    # ------------------------------------------------------------ lab state

    def logins(self) -> int:
        try:
            text = self.lab.sshd_log.read_text(errors="replace")
        except OSError:
            return 0
        return len(re.findall(r"Accepted \S+ for ", text))

    def reset(self) -> None:
        """Nothing running for the lab users, no records, no masters."""
        self._stop_blob()
        self.lab.cleanup_between_tests()
        time.sleep(self.args.settle)

    def control_sockets(self) -> list[Path]:
        uid = self.lab.user(LAPTOP_USER).uid
        d = Path(tempfile.gettempdir()) / f"nbremote-{uid}"
        import stat as st

        return [p for p in d.glob("*") if st.S_ISSOCK(p.lstat().st_mode)] if d.is_dir() else []

    def session_record(self) -> dict:
        path = self.lab.user(LAPTOP_USER).home / ".local/state/nbremote/sessions.json"
        doc = json.loads(path.read_text())
        if len(doc) != 1:
            raise BenchError(f"expected one remembered session, found {len(doc)}")
        return next(iter(doc.values()))

    def ssh_control(self, sock: Path, *args: str) -> subprocess.CompletedProcess:
        return self.lab.laptop_exec(["ssh", "-o", f"ControlPath={sock}", *args, "server"], timeout=20)

    def master_alive(self) -> bool:
        return any(self.ssh_control(s, "-O", "check").returncode == 0 for s in self.control_sockets())

    def jupyter_pids(self) -> list[str]:
        return self.lab.server_exec(["pgrep", "-u", ALICE, "-x", "jupyter-lab"]).stdout.split()

    def stop_keepers(self) -> list[int]:
        """End the background keepers `up --detach` started (by pid): a keeper
        rebuilds a cancelled forward or an ended master, which would make
        "no forward" / "no master" untrue mid-measurement."""
        uid = self.lab.user(LAPTOP_USER).uid
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.stat(f"/proc/{entry}").st_uid != uid:
                    continue
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"nbremote.keeper" in cmd:
                pids.append(int(entry))
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while any(netlab._pid_alive(p) for p in pids):
            if time.monotonic() > deadline:
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                break
            time.sleep(0.02)
        return pids

    def prepare_warm_master(self) -> None:
        self.stop_keepers()
        rec = self.session_record()
        socks = self.control_sockets()
        if not socks or not self.master_alive():
            raise BenchError("warm+master: the previous up left no live master")
        spec = f"127.0.0.1:{rec['local_port']}:127.0.0.1:{rec['remote_port']}"
        for s in socks:
            self.ssh_control(s, "-O", "cancel", "-L", spec)
        if not self.jupyter_pids():
            raise BenchError("warm+master: Jupyter is not running")
        time.sleep(self.args.settle)

    def prepare_warm(self) -> None:
        self.stop_keepers()
        for s in self.control_sockets():
            self.ssh_control(s, "-O", "exit")
        deadline = time.monotonic() + 5
        while self.lab.laptop_exec(["pgrep", "-u", LAPTOP_USER, "-x", "ssh"]).stdout.strip():
            if time.monotonic() > deadline:
                self.lab.kill_user_processes(LAPTOP_USER)
                break
            time.sleep(0.02)
        if not self.jupyter_pids():
            raise BenchError("warm: Jupyter is not running")
        time.sleep(self.args.settle)

    # ------------------------------------------------------------ measuring

    def _poller(self, where: str, port: int, token: str | None, timeout: float):
        argv = [
            str(LAB_PYTHON),
            "-c",
            PROBE_SRC,
            "poll",
            "127.0.0.1",
            str(port),
            token or "-",
            str(POLL_INTERVAL),
            str(timeout),
        ]
        kw = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        if where == "laptop":
            p = self.lab.laptop_popen(argv, **kw)
        else:
            p = self.lab.server_popen(argv, user=ALICE, **kw)
        lines = Lines(p.stdout)
        got = lines.wait_for(lambda line: line.split()[:1] in (["ready"], ["open"]), 15)
        if got is None:
            _stop(p)
            raise BenchError("poller did not start")
        if got[1].startswith("open"):
            _stop(p)
            raise BenchError(f"port {port} already answers before the command starts")
        return p, lines

    def timed(
        self,
        method: str,
        argv: list[str],
        *,
        port: int,
        env=None,
        where: str = "laptop",
        url_re: re.Pattern | None = None,
        wait_exit: bool = True,
        poll_token: str | None = None,
        token_of=None,
        timeout: float = 90.0,
        stderr_lines: int = 40,
    ) -> dict:
        """Start argv at t0 with a poller on port; return one sample."""
        logins0 = self.logins()
        poller, plines = self._poller(where, port, poll_token, timeout)
        proc = None
        sample: dict = {"method": method}
        try:
            popen = self.lab.laptop_popen if where == "laptop" else functools.partial(self.lab.server_popen, user=ALICE)
            t0 = time.monotonic()
            proc = popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out, err = Lines(proc.stdout), Lines(proc.stderr)
            got = plines.wait_for(lambda line: line.startswith("{"), timeout + 10)
            if got is None:
                raise BenchError(f"{method}: poller gave no result")
            res = json.loads(got[1])
            if res["t"] is None:
                raise BenchError(f"{method}: no HTTP answer within {timeout} s; stderr: {err.rel(t0)[-8:]}")
            sample.update(
                t=res["t"] - t0,
                status=res["status"],
                attempts=res["attempts"],
                t_listen=None if res["t_listen"] is None else res["t_listen"] - t0,
            )
            token = None
            if url_re is not None:
                url = out.wait_for(lambda line: bool(url_re.search(line)), timeout)
                if url is None:
                    raise BenchError(f"{method}: no URL printed; stdout {out.rel(t0)[-5:]} stderr {err.rel(t0)[-8:]}")
                sample["t_url"] = url[0] - t0
                token = url_re.search(url[1]).group(2)
            if wait_exit:
                rc = proc.wait(timeout)
                sample["t_exit"] = time.monotonic() - t0
                sample["rc"] = rc
                if rc != 0:
                    raise BenchError(f"{method}: exit {rc}; stderr {err.rel(t0)[-8:]}")
            if token is None and token_of is not None:
                token = token_of()
            if token is None and poll_token is not None:
                token = poll_token
            poller.stdin.write((token or "") + "\n")
            poller.stdin.flush()
            if token:
                v = plines.wait_for(lambda line: line.startswith('{"verify"'), 15)
                sample["verify"] = json.loads(v[1])["verify"] if v else None
                if sample["verify"] != 200:
                    raise BenchError(f"{method}: the token did not give 200 ({sample['verify']})")
            sample["stdout"] = out.rel(t0, 20)
            sample["stderr"] = err.rel(t0, stderr_lines)
        finally:
            _stop(proc)
            _stop(poller)
        sample["logins"] = self.logins() - logins0
        return sample

    def timed_exit(self, method: str, argv: list[str], env=None) -> dict:
        """Start argv in the laptop namespace; the time is its exit."""
        logins0 = self.logins()
        t0 = time.monotonic()
        p = self.lab.laptop_popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = p.communicate(timeout=60)
        finally:
            _stop(p)
        t = time.monotonic() - t0
        if p.returncode != 0:
            raise BenchError(f"{method}: exit {p.returncode}: {err.strip()[-300:]}")
        return {"method": method, "t": t, "logins": self.logins() - logins0}

    # ------------------------------------------------------------ methods

    def m_cold(self) -> dict:
        self.reset()
        return self.timed("nbremote cold", self._nb_up_argv(), port=PORT_NB, env=self.lab.nbremote_env(), url_re=NB_URL)

    def m_warm_master(self) -> dict:
        self.prepare_warm_master()
        return self.timed(
            "nbremote warm+master", self._nb_up_argv(), port=PORT_NB, env=self.lab.nbremote_env(), url_re=NB_URL
        )

    def m_warm(self) -> dict:
        self.prepare_warm()
        return self.timed("nbremote warm", self._nb_up_argv(), port=PORT_NB, env=self.lab.nbremote_env(), url_re=NB_URL)

    def _nb_up_argv(self, verbose: bool = False) -> list[str]:
        return self.lab.nbremote_argv(
            *(["-v"] if verbose else []), "up", "server", "--port", str(PORT_NB), "--no-browser", "--detach"
        )

    def diag(self) -> dict:
        """One more cold / warm+master / warm with `nbremote -v` (step-by-step log
        with its own ms clock); kept apart from the medians, for the analysis."""
        out = {}
        for name, prep in (
            ("nbremote cold", self.reset),
            ("nbremote warm+master", self.prepare_warm_master),
            ("nbremote warm", self.prepare_warm),
        ):
            prep()
            out[name] = self.timed(
                name + " -v",
                self._nb_up_argv(verbose=True),
                port=PORT_NB,
                env=self.lab.nbremote_env(),
                url_re=NB_URL,
                stderr_lines=300,
            )
        return out

    def m_manual(self) -> dict:
        self.reset()

        def token_of():
            r = self.lab.server_exec(["bash", "-lc", "jupyter server list --json"], user=ALICE)
            for line in r.stdout.splitlines():
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if doc.get("port") == MANUAL_REMOTE:
                    return doc.get("token")
            return None

        return self.timed(
            "manual recipe", ["bash", "-c", MANUAL_SCRIPT], port=PORT_MANUAL, wait_exit=False, token_of=token_of
        )

    def m_jf(self) -> dict:
        self.reset()
        env = {"BROWSER": "true", "COLUMNS": "400", "PYTHONUNBUFFERED": "1", "TERM": "dumb"}
        return self.timed(
            "jupyter-forward",
            [str(JF), "--port", str(PORT_JF), "server"],
            port=PORT_JF,
            env=env,
            url_re=JF_URL,
            wait_exit=False,
            timeout=120,
        )

    def f_login(self) -> dict:
        return self.timed_exit(
            "ssh login",
            ["ssh", "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "BatchMode=yes", "server", "true"],
        )

    def f_jupyter(self) -> dict:
        self.reset()
        token = os.urandom(24).hex()
        argv = [
            str(LAB_VENV / "bin" / "jupyter-lab"),
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={FLOOR_JUPYTER}",
            "--ServerApp.port_retries=0",
        ]
        env = {"JUPYTER_TOKEN": token, "PATH": f"{LAB_VENV}/bin:{netlab.CLEAN_PATH}"}
        s = self.timed(
            "jupyter start-up", argv, port=FLOOR_JUPYTER, env=env, where="server", wait_exit=False, poll_token=token
        )
        return s

    def f_rtt(self) -> dict:
        r = self.lab.laptop_exec([str(LAB_PYTHON), "-c", PROBE_SRC, "rtt", SERVER_ADDR, "22", "10"])
        if r.returncode != 0:
            raise BenchError(f"rtt probe: {r.stderr.strip()[-300:]}")
        doc = json.loads(r.stdout)
        return {"method": "round trip", "t": doc["median"], "min": doc["min"], "all": doc["all"], "logins": 0}

    def i_launch(self) -> dict:
        return self.timed_exit("launch overhead", ["true"])

    def i_client(self) -> dict:
        return self.timed_exit(
            "nbremote client start", self.lab.nbremote_argv("--version"), env=self.lab.nbremote_env()
        )

    # ------------------------------------------------------------ throughput

    def _stop_blob(self) -> None:
        _stop(self.blob_server)
        self.blob_server = None

    def throughput(self, reps: int) -> dict:
        self.reset()
        out: dict = {
            "download": {"nbremote": [], "plain": [], "direct": []},
            "gets": {"nbremote": [], "plain": []},
            "bytes": BLOB_BYTES,
            "gets_count": GETS,
        }
        up = self.lab.nbremote(
            "up", "server", "--port", str(PORT_NB), "--no-browser", "--detach", env=self.lab.nbremote_env(), timeout=120
        )
        if up.returncode != 0:
            raise BenchError(f"throughput: up failed: {up.stderr}")
        rec = self.session_record()
        blob = self.blob_dir / "big.bin"
        self.blob_server = self.lab.server_popen(
            [str(LAB_PYTHON), "-c", PROBE_SRC, "serve", str(BLOB_PORT), str(blob)],
            user=ALICE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        if self.blob_server.stdout.readline().strip() != "listening":
            raise BenchError("blob server did not start")
        sock = self.control_sockets()[0]
        fwd = self.ssh_control(sock, "-O", "forward", "-L", f"127.0.0.1:{PORT_DL_NB}:127.0.0.1:{BLOB_PORT}")
        if fwd.returncode != 0:
            raise BenchError(f"-O forward: {fwd.stderr}")
        plain = self.lab.laptop_popen(
            [
                "ssh",
                "-o",
                "ControlMaster=no",
                "-o",
                "ControlPath=none",
                "-o",
                "BatchMode=yes",
                "-o",
                "ExitOnForwardFailure=yes",
                "-N",
                "-L",
                f"127.0.0.1:{PORT_DL_PLAIN}:127.0.0.1:{BLOB_PORT}",
                "-L",
                f"127.0.0.1:{PORT_PLAIN}:127.0.0.1:{rec['remote_port']}",
                "server",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            w = self.lab.laptop_exec(
                [
                    str(LAB_PYTHON),
                    "-c",
                    PROBE_SRC,
                    "wait",
                    "127.0.0.1",
                    f"{PORT_DL_PLAIN},{PORT_PLAIN},{PORT_DL_NB},{PORT_NB}",
                    "30",
                ]
            )
            if w.returncode != 0:
                raise BenchError("tunnels for the throughput test did not come up")

            def laptop_probe(*a: str) -> dict:
                r = self.lab.laptop_exec([str(LAB_PYTHON), "-c", PROBE_SRC, *a], timeout=300)
                if r.returncode != 0:
                    raise BenchError(f"probe {a}: {r.stderr.strip()[-300:]}")
                return json.loads(r.stdout)

            for i in range(reps):
                order = [("nbremote", PORT_DL_NB), ("plain", PORT_DL_PLAIN)]
                if i % 2:
                    order.reverse()
                for name, port in order:
                    out["download"][name].append(laptop_probe("download", "127.0.0.1", str(port)))
                r = self.lab.server_exec(
                    [str(LAB_PYTHON), "-c", PROBE_SRC, "download", "127.0.0.1", str(BLOB_PORT)], user=ALICE, timeout=300
                )
                out["download"]["direct"].append(json.loads(r.stdout))
                order = [("nbremote", PORT_NB), ("plain", PORT_PLAIN)]
                if i % 2:
                    order.reverse()
                for name, port in order:
                    out["gets"][name].append(laptop_probe("gets", "127.0.0.1", str(port), rec["token"], str(GETS)))
            for kind in ("download",):
                for name, rows in out[kind].items():
                    for row in rows:
                        if row["bytes"] < BLOB_BYTES:
                            raise BenchError(f"{kind} via {name}: only {row['bytes']} bytes")
        finally:
            _stop(plain)
            self._stop_blob()
        return out

    # ------------------------------------------------------------ the run

    def run_rtt(self, rtt_ms: float, reps: int, jf_reps: int, tput_reps: int) -> dict:
        log(f"--- round trip {rtt_ms:g} ms: link with {rtt_ms / 2:g} ms each way")
        self.reset()
        self.lab.replace_link(functools.partial(delaylink.DelayLink.start, delay_ms=rtt_ms / 2))
        ping = [x for x in delaylink.icmp_ping(self.lab.laptop_ns, SERVER_ADDR, count=10) if x is not None]
        log(f"ping median {statistics.median(ping):.2f} ms" if ping else "ping: no answer")
        block: dict = {"rtt_ms": rtt_ms, "ping_ms": ping, "samples": {}, "errors": [], "loadavg_start": os.getloadavg()}
        samples = block["samples"]
        plan = [
            ("launch overhead", self.i_launch),
            ("nbremote client start", self.i_client),
            ("round trip", self.f_rtt),
            ("ssh login", self.f_login),
            ("nbremote cold", self.m_cold),
            ("nbremote warm+master", self.m_warm_master),
            ("nbremote warm", self.m_warm),
            ("manual recipe", self.m_manual),
            ("jupyter start-up", self.f_jupyter),
            ("jupyter-forward", self.m_jf),
        ]
        for rep in range(reps):
            for name, fn in plan:
                if name == "jupyter-forward" and rep >= jf_reps:
                    continue
                try:
                    s = fn()
                except Exception as e:  # noqa: BLE001 - record and go on
                    log(f"{name} rep {rep}: FAILED {e}")
                    block["errors"].append(
                        {"method": name, "rep": rep, "error": str(e), "trace": traceback.format_exc()[-2000:]}
                    )
                    continue
                s["rep"] = rep
                samples.setdefault(name, []).append(s)
                extra = "".join(f" {k}={s[k]:.3f}" for k in ("t_url", "t_exit", "t_listen") if s.get(k) is not None)
                log(f"{name:22s} rep {rep}: {s['t']:.3f} s{extra} logins={s['logins']}")
        if self.args.diag:
            try:
                block["diag"] = self.diag()
                log("diag: " + ", ".join(f"{k} {v['t']:.3f}" for k, v in block["diag"].items()))
            except Exception as e:  # noqa: BLE001
                log(f"diag: FAILED {e}")
                block["errors"].append({"method": "diag", "error": str(e), "trace": traceback.format_exc()[-2000:]})
        if tput_reps:
            try:
                block["throughput"] = self.throughput(tput_reps)
                d = block["throughput"]["download"]
                g = block["throughput"]["gets"]
                log(
                    "download MB/s: "
                    + ", ".join(
                        f"{k} {statistics.median(BLOB_BYTES / 1e6 / r['seconds'] for r in v):.0f}" for k, v in d.items()
                    )
                )
                log(
                    "50 GETs s: "
                    + ", ".join(f"{k} {statistics.median(r['seconds'] for r in v):.3f}" for k, v in g.items())
                )
            except Exception as e:  # noqa: BLE001
                log(f"throughput: FAILED {e}")
                block["errors"].append(
                    {"method": "throughput", "error": str(e), "trace": traceback.format_exc()[-2000:]}
                )
        self.reset()
        block["loadavg_end"] = os.getloadavg()
        return block


def _meta(args, src_desc: str) -> dict:
    lab_py = [
        str(LAB_PYTHON),
        "-c",
        "import jupyterlab, jupyter_server, notebook, sys; "
        "print(jupyterlab.__version__, jupyter_server.__version__, notebook.__version__, sys.version.split()[0])",
    ]
    jl, js, nb, py = subprocess.run(lab_py, capture_output=True, text=True).stdout.split()
    jf_py = [
        str(JF_VENV / "bin" / "python"),
        "-c",
        "import importlib.metadata as m; print(m.version('jupyter-forward'), m.version('paramiko'))",
    ]
    jf = subprocess.run(jf_py, capture_output=True, text=True).stdout.split() or ["?", "?"]
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "sudo /opt/nbremote-lab/venv/bin/python bench/run.py " + shlex.join(sys.argv[1:]),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "openssh": _cmd_version(["ssh", "-V"]),
        "python": py,
        "jupyterlab": jl,
        "jupyter_server": js,
        "notebook": nb,
        "jupyter_forward": jf[0],
        "paramiko": jf[1] if len(jf) > 1 else "?",
        "nbremote_src": src_desc,
        "reps": args.reps,
        "jf_reps": args.jf_reps,
        "rtts_ms": args.rtts,
        "tput_reps": args.tput_reps,
        "poll_interval_s": POLL_INTERVAL,
        "settle_s": args.settle,
        "blob_bytes": BLOB_BYTES,
        "gets": GETS,
    }


def _source(args, tmp: Path) -> tuple[Path, str]:
    """The nbremote source the laptop runs: HEAD (default) or the working tree."""
    rev = (
        subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        or "unknown"
    )
    if args.src == "worktree":
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "src"], capture_output=True, text=True
        ).stdout.strip()
        return REPO / "src", f"working tree at {rev}" + (" (src/ modified)" if dirty else "")
    dst = tmp / "src-head"
    dst.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD", "src"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dst)], input=archive.stdout, check=True)
    return dst / "src", f"commit {rev}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rtts", default="0,20,100", help="round-trip times in ms, comma separated")
    ap.add_argument(
        "--jf-reps", default=None, help="jupyter-forward reps: one number, or one per RTT (e.g. 5,5,3); default --reps"
    )
    ap.add_argument(
        "--tput-reps", default="3,1,1", help="throughput reps per RTT (one number, or one per RTT; 0 skips)"
    )
    ap.add_argument("--settle", type=float, default=0.5, help="pause before each measured run, s")
    ap.add_argument(
        "--src",
        choices=("HEAD", "worktree"),
        default="HEAD",
        help="which nbremote source the laptop runs (default: the committed HEAD)",
    )
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument(
        "--no-diag", dest="diag", action="store_false", help="skip the extra `nbremote -v` runs kept for the analysis"
    )
    ap.add_argument("--no-report", action="store_true")
    args = ap.parse_args()
    args.rtts = [float(x) for x in args.rtts.split(",")]

    def per_rtt(spec, default):
        vals = [int(x) for x in str(spec).split(",")] if spec is not None else [default]
        return [vals[min(i, len(vals) - 1)] for i in range(len(args.rtts))]

    jf_reps = per_rtt(args.jf_reps, args.reps)
    tput_reps = per_rtt(args.tput_reps, 1)
    args.jf_reps, args.tput_reps = jf_reps, tput_reps
    if os.geteuid() != 0:
        print("run as root (the lab builds namespaces and users)", file=sys.stderr)
        return 2
    if not JF.exists():
        print(
            f"{JF} missing: /usr/bin/python3 -m venv {JF_VENV} && {JF_VENV}/bin/pip install "
            f"jupyter-forward=={JF_VERSION} && chmod -R a+rX {JF_VENV}",
            file=sys.stderr,
        )
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="nbr-bench-"))
    os.chmod(tmp, 0o755)
    lab = None
    started = time.monotonic()
    try:
        src_dir, src_desc = _source(args, tmp)
        meta = _meta(args, src_desc)
        log(f"building the lab ({src_desc})")
        lab = netlab.Lab.build(
            tmp / "lab",
            src_dir=src_dir,
            lock_timeout=900,
            link_factory=functools.partial(delaylink.DelayLink.start, delay_ms=0),
        )
        # An installed package has its bytecode; the lab's root-owned copy has
        # none and runs with PYTHONDONTWRITEBYTECODE, so compile it once.
        subprocess.run([str(LAB_PYTHON), "-m", "compileall", "-q", str(lab.src_copy / "src")], check=True)
        subprocess.run(["chmod", "-R", "a+rX", str(lab.src_copy)], check=True)
        bench = Bench(lab, args)
        bench.blob_dir = tmp / "blob"
        bench.blob_dir.mkdir()
        os.chmod(bench.blob_dir, 0o755)
        with open(bench.blob_dir / "big.bin", "wb") as f:
            for _ in range(BLOB_BYTES // 10**6):
                f.write(os.urandom(10**6))
        os.chmod(bench.blob_dir / "big.bin", 0o644)
        started = time.monotonic()  # the lab lock may have been waited for
        meta["lab_timings_s"] = {k: round(v, 2) for k, v in lab.timings.items()}
        results = {"meta": meta, "rtts": []}
        for i, rtt in enumerate(args.rtts):
            results["rtts"].append(bench.run_rtt(rtt, args.reps, jf_reps[i], tput_reps[i]))
            (out_dir / "results.json").write_text(json.dumps(results, indent=1))
        results["meta"]["wall_s"] = round(time.monotonic() - started, 1)
        (out_dir / "results.json").write_text(json.dumps(results, indent=1))
        log(f"wrote {out_dir / 'results.json'} after {time.monotonic() - started:.0f} s")
    finally:
        if lab is not None:
            failures = lab.teardown()
            if failures:
                log(f"lab teardown problems: {failures}")
        subprocess.run(["rm", "-rf", str(tmp)])
    if not args.no_report:
        py = BENCH_VENV / "bin" / "python"
        if py.exists():
            subprocess.run([str(py), str(HERE / "report.py"), str(out_dir / "results.json")], check=False)
        else:
            log(f"no {py}: render with a python that has matplotlib: bench/report.py {out_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
