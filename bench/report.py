"""Render docs/benchmarks.md and docs/benchmarks-up.png from bench/run.py's results.

    /opt/nbremote-lab/benchvenv/bin/python bench/report.py [bench/results/results.json]

Needs matplotlib for the plot (kept out of the project's dependencies: a
separate venv, /opt/nbremote-lab/benchvenv, has it). Without matplotlib the
Markdown is still written and the plot is skipped with a message.
bench/notes.md, the hand-written analysis of the run, is appended verbatim.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DOC = REPO / "docs" / "benchmarks.md"
PLOT = REPO / "docs" / "benchmarks-up.png"
NOTES = HERE / "notes.md"

METHODS = ("nbremote cold", "nbremote warm", "nbremote warm+master", "manual recipe", "jupyter-forward")
FLOORS = ("ssh login", "jupyter start-up", "round trip")
INFO = ("launch overhead", "nbremote client start")
NB = ("nbremote cold", "nbremote warm", "nbremote warm+master")
TOLERANCE = 0.05  # "no worse than the plain tunnel" allows 5 % run-to-run noise


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=2):
    return "–" if x is None else f"{x:.{digits}f}"


def fmt_t(x):
    if x is None:
        return "–"
    return f"{x:.3f}" if x < 1 else f"{x:.2f}"


class Results:
    def __init__(self, doc: dict):
        self.meta = doc["meta"]
        self.blocks = doc["rtts"]
        self.rtts = [b["rtt_ms"] for b in self.blocks]

    def samples(self, block, method, key="t"):
        return [s.get(key) for s in block["samples"].get(method, []) if s.get(key) is not None]

    def median(self, block, method, key="t"):
        return med(self.samples(block, method, key))

    def cell(self, block, method, key="t"):
        xs = self.samples(block, method, key)
        if not xs:
            return "–"
        if len(xs) == 1:
            return fmt_t(xs[0])
        return f"**{fmt_t(med(xs))}** ({fmt_t(min(xs))}–{fmt_t(max(xs))})"

    def block_for(self, rtt):
        for b in self.blocks:
            if b["rtt_ms"] == rtt:
                return b
        return None


def rtt_label(r):
    return f"{r:g} ms"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def times_table(R: Results) -> str:
    header = ["method"] + [rtt_label(r) for r in R.rtts] + ["n"]
    rows = []
    labels = {
        "jupyter-forward": "jupyter-forward (first answer)",
        "ssh login": "floor: one bare ssh login",
        "jupyter start-up": "floor: Jupyter's own start-up",
        "round trip": "floor: one round trip (TCP connect)",
        "launch overhead": "info: start any command in the lab",
        "nbremote client start": "info: `nbremote --version`",
    }
    for m in METHODS + FLOORS + INFO:
        n = sorted({len(b["samples"].get(m, [])) for b in R.blocks})
        rows.append([labels.get(m, m)] + [R.cell(b, m) for b in R.blocks] + ["/".join(map(str, n))])
        if m == "jupyter-forward":
            rows.append(["jupyter-forward (URL printed)"] + [R.cell(b, m, "t_url") for b in R.blocks] + [""])
    return table(header, rows)


def url_table(R: Results) -> str:
    header = ["method"] + [rtt_label(r) for r in R.rtts]
    rows = []
    for m in NB + ("jupyter-forward",):
        cells = []
        for b in R.blocks:
            lags = [s["t_url"] - s["t"] for s in b["samples"].get(m, []) if s.get("t_url") is not None]
            cells.append("–" if not lags else f"{med(lags) * 1000:+.0f} ms (max {max(lags) * 1000:+.0f})")
        rows.append([m] + cells)
    return table(header, rows)


def targets(R: Results) -> tuple[str, list[str]]:
    rows, misses = [], []

    def verdict(ok):
        return "PASS" if ok else "**MISS**"

    for b in R.blocks:
        r = R.median(b, "round trip")
        login = R.median(b, "ssh login")
        jup = R.median(b, "jupyter start-up")
        wm, w, c = R.median(b, "nbremote warm+master"), R.median(b, "nbremote warm"), R.median(b, "nbremote cold")
        manual, jf = R.median(b, "manual recipe"), R.median(b, "jupyter-forward")
        lab = rtt_label(b["rtt_ms"])
        checks = []
        if None not in (wm, r):
            bound = 2 * r + 0.05
            checks.append(
                (
                    "warm+master ≤ 2 RTT + 0.05 s",
                    f"{fmt_t(wm)} s ≤ 2×{r * 1000:.1f} ms + 0.05 = {fmt_t(bound)} s",
                    wm <= bound,
                )
            )
        urls = [s["t_url"] for s in b["samples"].get("nbremote warm+master", []) if s.get("t_url") is not None]
        if urls and r is not None:
            bound = 2 * r + 0.1
            checks.append(
                (
                    "warm+master to the printed URL ≤ 2 RTT + 0.1 s",
                    f"{fmt_t(med(urls))} s ≤ 2×{r * 1000:.1f} ms + 0.1 = {fmt_t(bound)} s",
                    med(urls) <= bound,
                )
            )
        if None not in (w, r, login):
            bound = login + 2 * r + 0.1
            checks.append(
                (
                    "warm ≤ login + 2 RTT + 0.1 s",
                    f"{fmt_t(w)} s ≤ {fmt_t(login)} + 2×{r * 1000:.1f} ms + 0.1 = {fmt_t(bound)} s",
                    w <= bound,
                )
            )
        if None not in (c, r, login, jup):
            bound = login + jup + 3 * r + 0.15
            checks.append(
                (
                    "cold ≤ login + Jupyter + 3 RTT + 0.15 s",
                    f"{fmt_t(c)} s ≤ {fmt_t(login)} + {fmt_t(jup)} + 3×{r * 1000:.1f} ms + 0.15 = {fmt_t(bound)} s",
                    c <= bound,
                )
            )
        if None not in (c, manual):
            checks.append(
                ("cold ≤ manual recipe", f"{fmt_t(c)} s ≤ {fmt_t(manual)} s (ratio {c / manual:.2f})", c <= manual)
            )
        if None not in (c, jf) and b["rtt_ms"] == 100:
            checks.append(
                (
                    "jupyter-forward ≥ 2.5 × cold (at 100 ms)",
                    f"{fmt_t(jf)} / {fmt_t(c)} = {jf / c:.2f}× ≥ 2.5×",
                    jf / c >= 2.5,
                )
            )
        for m in NB:
            lags = [s["t_url"] - s["t"] for s in b["samples"].get(m, []) if s.get("t_url") is not None]
            if lags:
                lag = med(lags)
                checks.append(
                    (
                        f"URL within 50 ms of the tunnel answering ({m.replace('nbremote ', '')})",
                        f"median {lag * 1000:+.0f} ms ≤ +50 ms (max {max(lags) * 1000:+.0f} ms)",
                        lag <= 0.05,
                    )
                )
        tp = b.get("throughput")
        if tp:
            d = {k: med([tp["bytes"] / 1e6 / x["seconds"] for x in v]) for k, v in tp["download"].items()}
            g = {k: med([x["seconds"] for x in v]) for k, v in tp["gets"].items()}
            if d.get("nbremote") and d.get("plain"):
                checks.append(
                    (
                        "200 MB download: nbremote's tunnel no worse than `ssh -L`",
                        f"{d['nbremote']:.0f} MB/s ≥ {1 - TOLERANCE:.2f}×{d['plain']:.0f} MB/s",
                        d["nbremote"] >= (1 - TOLERANCE) * d["plain"],
                    )
                )
            if g.get("nbremote") and g.get("plain"):
                checks.append(
                    (
                        f"{tp['gets_count']} GET /api/status: nbremote's tunnel no worse than `ssh -L`",
                        f"{fmt_t(g['nbremote'])} s ≤ {1 + TOLERANCE:.2f}×{fmt_t(g['plain'])} s",
                        g["nbremote"] <= (1 + TOLERANCE) * g["plain"],
                    )
                )
        for name, detail, ok in checks:
            # the comparison sign shows which way it went
            detail = detail.replace(" ≤ ", " ≤ " if ok else " > ", 1).replace(" ≥ ", " ≥ " if ok else " < ", 1)
            rows.append([lab, name, detail, verdict(ok)])
            if not ok:
                misses.append(f"{name} at {lab}: {detail}")
    return table(["RTT", "target", "measured vs bound (medians)", ""], rows), misses


def ratios_table(R: Results) -> str:
    rows = []
    for b in R.blocks:
        c, manual, jf = R.median(b, "nbremote cold"), R.median(b, "manual recipe"), R.median(b, "jupyter-forward")
        jfu = R.median(b, "jupyter-forward", "t_url")
        rows.append(
            [
                rtt_label(b["rtt_ms"]),
                f"{c / manual:.2f}" if c and manual else "–",
                f"{jf / c:.2f}" if c and jf else "–",
                f"{jfu / c:.2f}" if c and jfu else "–",
            ]
        )
    return table(["RTT", "cold / manual", "jupyter-forward / cold (first answer)", "jupyter-forward URL / cold"], rows)


def logins_table(R: Results) -> str:
    header = ["method"] + [rtt_label(r) for r in R.rtts]
    rows = []
    for m in METHODS + ("ssh login", "jupyter start-up"):
        cells = []
        for b in R.blocks:
            vals = sorted({s["logins"] for s in b["samples"].get(m, [])})
            cells.append("–" if not vals else "/".join(map(str, vals)))
        rows.append([m] + cells)
    return table(header, rows)


def throughput_table(R: Results) -> str:
    rows = []
    for b in R.blocks:
        tp = b.get("throughput")
        if not tp:
            continue
        d = {k: [tp["bytes"] / 1e6 / x["seconds"] for x in v] for k, v in tp["download"].items()}
        g = {k: [x["seconds"] for x in v] for k, v in tp["gets"].items()}
        n = len(d.get("nbremote", []))
        rows.append(
            [
                rtt_label(b["rtt_ms"]),
                str(n),
                fmt(med(d.get("nbremote", [])), 0),
                fmt(med(d.get("plain", [])), 0),
                fmt(med(d.get("direct", [])), 0),
                fmt_t(med(g.get("nbremote", []))),
                fmt_t(med(g.get("plain", []))),
            ]
        )
    return table(
        [
            "RTT",
            "reps",
            "download MB/s: nbremote's forward",
            "plain `ssh -N -L`",
            "direct (server loopback)",
            "GETs s: nbremote's forward",
            "plain `ssh -N -L`",
        ],
        rows,
    )


def _first_line_time(sample, needle):
    for t, line in sample.get("stderr", []):
        if needle in line:
            return t
    return None


def breakdown_table(R: Results) -> str:
    """Where the time goes, from the extra `nbremote -v` runs (one each)."""
    header = ["RTT", "run", "first ssh started", "agent's hello", "forward up", "first answer", "URL printed", "exit"]
    rows = []
    for b in R.blocks:
        for m, s in (b.get("diag") or {}).items():
            first_ssh = min(
                [
                    t
                    for t in (_first_line_time(s, "nbremote.ssh: run"), _first_line_time(s, "<agent:"))
                    if t is not None
                ],
                default=None,
            )
            hello = _first_line_time(s, "nbremote.agentlink: agent ")
            rows.append(
                [
                    rtt_label(b["rtt_ms"]),
                    m.replace("nbremote ", ""),
                    fmt_t(first_ssh),
                    fmt_t(hello),
                    fmt_t(s.get("t_listen")),
                    fmt_t(s.get("t")),
                    fmt_t(s.get("t_url")),
                    fmt_t(s.get("t_exit")),
                ]
            )
    return table(header, rows) if rows else "(no diagnostic runs in these results)"


def plot(R: Results) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: plot skipped"
    fig, ax = plt.subplots(figsize=(8, 5.2), dpi=120)
    styles = {
        "nbremote cold": dict(color="#1f77b4", marker="o"),
        "nbremote warm": dict(color="#2ca02c", marker="s"),
        "nbremote warm+master": dict(color="#17becf", marker="^"),
        "manual recipe": dict(color="#ff7f0e", marker="D"),
        "jupyter-forward": dict(color="#d62728", marker="v"),
        "ssh login": dict(color="grey", linestyle="--", marker="."),
        "jupyter start-up": dict(color="black", linestyle=":", marker="."),
        "round trip": dict(color="silver", linestyle="-.", marker="."),
    }
    names = {
        "ssh login": "floor: one ssh login",
        "jupyter start-up": "floor: Jupyter start-up",
        "round trip": "floor: one round trip",
    }
    for m in METHODS + FLOORS:
        xs, ys, lo, hi = [], [], [], []
        for b in R.blocks:
            v = R.samples(b, m)
            if v:
                xs.append(b["rtt_ms"])
                ys.append(med(v))
                lo.append(med(v) - min(v))
                hi.append(max(v) - med(v))
        if xs:
            ax.errorbar(xs, ys, yerr=[lo, hi], capsize=3, label=names.get(m, m), **styles[m])
    xs = [b["rtt_ms"] for b in R.blocks if R.samples(b, "jupyter-forward", "t_url")]
    ys = [R.median(b, "jupyter-forward", "t_url") for b in R.blocks if R.samples(b, "jupyter-forward", "t_url")]
    if xs:
        ax.plot(xs, ys, color="#d62728", linestyle=":", marker="x", label="jupyter-forward: URL printed")
    ax.set_xlabel("round-trip time laptop ↔ server (ms)")
    ax.set_ylabel("command → first HTTP answer through the tunnel (s)")
    ax.set_title("nbremote up vs alternatives (median, bars min–max)")
    ax.set_xticks(R.rtts)
    ax.grid(True, alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(PLOT)
    plt.close(fig)
    return None


def render(R: Results) -> str:
    m = R.meta
    targets_md, misses = targets(R)
    jf_reps = m.get("jf_reps")
    reps_note = f"{m['reps']} reps per method and RTT"
    if jf_reps and any(j != m["reps"] for j in jf_reps):
        reps_note += ", jupyter-forward " + "/".join(map(str, jf_reps))
    errors = [
        f"{rtt_label(b['rtt_ms'])} {e['method']}" + (f" rep {e['rep']}" if "rep" in e else "") + f": {e['error']}"
        for b in R.blocks
        for e in b.get("errors", [])
    ]
    parts = [
        "# Benchmarks: from command to a notebook that answers",
        "",
        "Generated by `bench/report.py` from the raw samples of `bench/run.py`; do not edit by hand "
        "(the analysis at the end is `bench/notes.md`).",
        "",
        "## Reproduce",
        "",
        "```sh",
        "# once: jupyter-forward in its own venv, matplotlib for the report in another",
        "/usr/bin/python3 -m venv /opt/nbremote-lab/jf && /opt/nbremote-lab/jf/bin/pip install jupyter-forward==2022.9.10"
        " && chmod -R a+rX /opt/nbremote-lab/jf",
        "/usr/bin/python3 -m venv /opt/nbremote-lab/benchvenv && /opt/nbremote-lab/benchvenv/bin/pip install matplotlib",
        "# the run (as root: it builds the lab), then this page",
        m["command"],
        "/opt/nbremote-lab/benchvenv/bin/python bench/report.py bench/results/results.json",
        "```",
        "",
        "## Machine and run",
        "",
        f"- Date: {m['date']}; the run took {m.get('wall_s', '?')} s after building the lab ({reps_note}).",
        f"- {m['cpus']} cores ({m['cpu_model']}), kernel {m['kernel']}; laptop, sshd, Jupyter and the delay relay "
        "share these cores.",
        f"- {m['openssh']}; Python {m['python']}; JupyterLab {m['jupyterlab']}, jupyter_server {m['jupyter_server']}, "
        f"notebook {m['notebook']}; jupyter-forward {m['jupyter_forward']} (paramiko {m['paramiko']}).",
        f"- nbremote: {m['nbremote_src']} (bytecode compiled once, as an installed package has it).",
        "- Load average (1 min) at the start and end of each RTT block: "
        + ", ".join(
            f"{rtt_label(b['rtt_ms'])}: {b['loadavg_start'][0]:.2f} → {b['loadavg_end'][0]:.2f}"
            for b in R.blocks
            if b.get("loadavg_start") and b.get("loadavg_end")
        )
        + ".",
        "",
        "## How it is measured",
        "",
        "- The lab (`tests/lab/netlab.py`): a laptop and a server network namespace. The link is "
        "`tests/lab/delaylink.py`, a user-space relay between two TUN devices that holds every packet RTT/2 in "
        "each direction (this kernel has no netem). **0 ms is the same relay with no hold**, so every point goes "
        "through the same path; `ping` medians through it are listed below.",
        "- Time = from starting the command in the laptop namespace (t0) to the **first HTTP answer from Jupyter "
        "through the tunnel**. A poller in the laptop namespace starts a `GET /api/status` on the method's local "
        f"port every {m['poll_interval_s'] * 1000:.0f} ms, each in its own thread, *without* a token, so the first "
        "answer is Jupyter's 403 (the tunnel and Jupyter both answered; the token is generated per run). After the "
        "run the token parsed from the method's output (nbremote's URL, jupyter-forward's URL, `jupyter server list` "
        "for the manual recipe) is checked with one more GET, which must return 200, so every sample is a working "
        "notebook. The moment the URL line appears on the method's stdout is time-stamped too. All clocks are "
        "CLOCK_MONOTONIC.",
        "- nbremote runs as `nbremote up server --port P --no-browser --detach`. **cold**: nothing running, nothing "
        "remembered (lab cleanup before each). **warm+master**: straight after a cold run, whose master and "
        "session record remain; the background keeper that `up --detach` started is stopped and the forward "
        "cancelled (`ssh -O cancel`) first, otherwise the port would answer before the command starts (or the "
        "keeper would put it back mid-run). **warm**: Jupyter running, keeper stopped, the master ended with "
        "`ssh -O exit`.",
        '- **manual recipe**: `ssh server "bash -lc \'tmux new -d -s nb \\"jupyter lab --no-browser '
        "--port=8889\\\"'\" && ssh -N -L P:localhost:8889 server` (JupyterLab like nbremote's default; `bash -lc` "
        "because Jupyter is on the login PATH only). **jupyter-forward**: `BROWSER=true jupyter-forward --port P "
        "server` as the laptop user (it has no no-browser switch); both its first answer and the moment it prints "
        "its URL are given.",
        "- Floors, measured the same way: **one ssh login** = `ssh -o ControlMaster=no server true` to its exit; "
        "**Jupyter's start-up** = exec of `jupyter-lab` on the server to its first 200, polled inside the server "
        "namespace; **one round trip** = TCP connect to the server's port 22 (median of 10).",
        "- SSH connections = `Accepted publickey` lines the lab's sshd logged during the run.",
        f"- Before every measured run: {m['settle_s']} s pause. The extra `nbremote -v` runs used for the "
        "time line below are not part of the medians.",
        "",
        "## Results: seconds from command to first answer",
        "",
        "Median (min–max).",
        "",
        times_table(R),
        "",
        "Ping through the link (median ms): "
        + ", ".join(f"{rtt_label(b['rtt_ms'])}: {med(b['ping_ms']):.2f}" for b in R.blocks if b.get("ping_ms"))
        + ".",
        "",
        f"![time against round-trip time]({PLOT.name})",
        "",
        "## Targets",
        "",
        "Bounds computed from the floors measured at the same RTT in the same run (RTT = the TCP-connect median).",
        "",
        targets_md,
        "",
        "Ratios (medians):",
        "",
        ratios_table(R),
        "",
        "## URL printed vs tunnel answering",
        "",
        "When the URL line appeared, relative to the first answer the poller got (negative: the method's own "
        "check got there first).",
        "",
        url_table(R),
        "",
        "## SSH connections per run",
        "",
        "New authenticated SSH connections (distinct values over the reps).",
        "",
        logins_table(R),
        "",
        "## Throughput through the tunnel",
        "",
        f"A {R.meta.get('blob_bytes', 200e6) / 1e6:.0f} MB download from a `sendfile()` HTTP server on the server's loopback, "
        "through a forward that nbremote's own master carries (added with `ssh -O forward`, exactly as nbremote "
        "adds Jupyter's), through a plain `ssh -N -L`, and direct on the server's loopback; and "
        "50 sequential `GET /api/status` to Jupyter (a new connection each) through nbremote's forward and through "
        "a plain `ssh -N -L`. Medians.",
        "",
        throughput_table(R),
        "",
        "## Time line of one nbremote run (the `-v` runs)",
        "",
        "Seconds from t0: when the first ssh was started (client start-up before it), when the agent's hello "
        "arrived (login + agent start), when the local forward accepted connections, the first answer through it, "
        "the URL line, and the exit.",
        "",
        breakdown_table(R),
        "",
    ]
    if errors:
        parts += ["## Failed samples", "", *[f"- {e}" for e in errors], ""]
    if misses:
        parts += ["## Missed targets (summary)", "", *[f"- {x}" for x in misses], ""]
    if NOTES.exists():
        parts += [NOTES.read_text().rstrip(), ""]
    return "\n".join(parts)


def main() -> int:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "results" / "results.json"
    R = Results(json.loads(path.read_text()))
    msg = plot(R)
    if msg:
        print(msg, file=sys.stderr)
    DOC.write_text(render(R))
    print(f"wrote {DOC}" + ("" if msg else f" and {PLOT}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
