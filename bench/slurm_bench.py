"""`nbremote up --slurm` on an idle cluster, against Slurm's own time to start a trivial job.

    sudo /opt/nbremote-lab/venv/bin/python bench/slurm_bench.py [--reps 5] [--out bench/results]

Builds one Lab (tests/lab/netlab.py) and the single-node Slurm of
tests/lab/slurmlab.py in its server namespace (login and compute node at once,
no added latency). Each repetition, interleaved, measures:

- slurm:   `sbatch --parsable --wrap true` as the user on the login node, until
           `scontrol show job` no longer says PENDING (polled every 20 ms, in the
           server namespace, so no ssh is counted): Slurm's own start time.
- jupyter: exec of `jupyter-lab` on the node until its first 200 on /api/status
           (polled every 20 ms): Jupyter's own start-up.
- nbremote: `nbremote up server --slurm --time=10 --port P --no-browser --detach --json`
           in the laptop namespace, cold (no master), until a poller in the laptop
           namespace gets an HTTP 200 from /api/status through the tunnel with the
           token. The token comes from the command's JSON, printed as it exits, so
           the poller starts then: the command's own check had its 200 through the
           tunnel before that, and this time is an upper bound of the first 200.

Between repetitions the job is cancelled (`nbremote down`) and the queue is
empty. Target: nbremote within Jupyter's start-up + 1 s of Slurm's start time.
Raw samples go to OUT/slurm.json and a table to stdout.

    sudo /opt/nbremote-lab/venv/bin/python bench/slurm_bench.py --node-login [--reps 5]

compares instead, on the cluster whose compute node is a host of its own with
pam_slurm_adopt (slurmlab.py's node_host), `nbremote up --slurm` with node login
(Jupyter on the node's loopback, the laptop's ssh to the node through the login
node) against the same without (`node_login = "no"`: Jupyter on NodeAddr), each
to its first 200 through the tunnel: two profiles for the same login node that
differ only in node_login, interleaved, their order swapped every repetition.
Raw samples go to OUT/slurm_node_login.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "lab"))

import netlab  # noqa: E402
import slurmlab  # noqa: E402

SLURM_START = r"""
import subprocess,sys,time
t0=time.monotonic()
job=subprocess.run(['sbatch','--parsable','--wrap','true'],capture_output=True,text=True,check=True).stdout.strip()
while True:
    out=subprocess.run(['scontrol','show','job','-o',job],capture_output=True,text=True).stdout
    state=next((w[9:] for w in out.split() if w.startswith('JobState=')),'')
    if state!='PENDING':break
    time.sleep(0.02)
print(time.monotonic()-t0)
"""

JUPYTER_START = r"""
import http.client,os,secrets,signal,socket,subprocess,sys,time
s=socket.socket();s.bind(('127.0.0.1',0));port=s.getsockname()[1];s.close()
token=secrets.token_hex(24);path=os.path.expanduser('~/.bench-token')
fd=os.open(path,os.O_WRONLY|os.O_CREAT|os.O_TRUNC,0o600);os.write(fd,token.encode());os.close(fd)
env=dict(os.environ,JUPYTER_TOKEN_FILE=path)
t0=time.monotonic()
p=subprocess.Popen([sys.argv[1],'--no-browser','--ip=127.0.0.1','--port=%d'%port,'--ServerApp.port_retries=0'],
                   env=env,stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
while True:
    c=http.client.HTTPConnection('127.0.0.1',port,timeout=2)
    try:
        c.request('GET','/api/status',headers={'Authorization':'token '+token})
        if c.getresponse().status==200:break
    except OSError:pass
    finally:c.close()
    time.sleep(0.02)
print(time.monotonic()-t0)
p.send_signal(signal.SIGTERM);p.wait(10);os.unlink(path)
"""

# Runs in the laptop namespace: starts `nbremote up`, reads the URL from its JSON,
# polls it until the first 200, prints the seconds from start to that 200.
UP_AND_POLL = r"""
import http.client,json,subprocess,sys,time
argv=json.loads(sys.argv[1]);port=int(sys.argv[2])
t0=time.monotonic()
p=subprocess.Popen(argv,stdout=subprocess.PIPE,stderr=subprocess.PIPE,text=True)
out,err=p.communicate(timeout=300)
if p.returncode!=0:sys.exit('up failed: '+err)
token=json.loads(out)['url'].split('token=')[1]
exited=time.monotonic()-t0
while True:
    c=http.client.HTTPConnection('127.0.0.1',port,timeout=2)
    try:
        c.request('GET','/api/status',headers={'Authorization':'token '+token})
        if c.getresponse().status==200:break
    except OSError:pass
    finally:c.close()
    time.sleep(0.01)
print(json.dumps({'first_200':time.monotonic()-t0,'exited':exited,'job_id':json.loads(out)['job_id']}))
"""


def seconds_of(done) -> float:
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return float(done.stdout.strip().splitlines()[-1])


def slurm_start(lab) -> float:
    sample = seconds_of(lab.server_exec([str(netlab.LAB_PYTHON), "-c", SLURM_START], user=netlab.ALICE, timeout=120))
    return sample


def jupyter_start(lab) -> float:
    return seconds_of(
        lab.server_exec(
            [str(netlab.LAB_PYTHON), "-c", JUPYTER_START, str(netlab.LAB_VENV / "bin" / "jupyter-lab")],
            user=netlab.ALICE,
            timeout=120,
        )
    )


def nbremote_up(lab, port: int, host: str = "server") -> dict:
    argv = lab.nbremote_argv(
        "up", host, "--slurm", "--time=10", "--port", str(port), "--no-browser", "--detach", "--json"
    )
    done = lab.laptop_exec(
        [str(netlab.LAB_PYTHON), "-c", UP_AND_POLL, json.dumps(argv), str(port)],
        env=lab.nbremote_env(None),
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def end_rep(lab, cluster, host: str) -> None:
    """`down HOST`, then the cluster and the lab as the next rep needs them."""
    down = lab.nbremote("down", host)
    if down.returncode != 0:
        raise RuntimeError(down.stderr)
    cluster.wait_empty()
    lab.cleanup_between_tests()


def node_login(args) -> int:
    workdir = Path("/tmp") / f"nbremote-slurm-bench-{int(time.time())}"
    lab = netlab.Lab.build(workdir, lock_timeout=1200)
    samples: dict[str, list[float]] = {"yes": [], "no": []}
    try:
        cluster = slurmlab.SlurmCluster.start(lab, node_host=True)
        hosts = lab.user(netlab.LAPTOP_USER).home / ".config" / "nbremote" / "hosts.toml"
        for mode in samples:
            added = lab.nbremote("add", f"c{mode}", "--address", netlab.SERVER_ADDR, "--user", netlab.ALICE)
            if added.returncode != 0:
                raise RuntimeError(added.stderr)
            hosts.write_text(
                hosts.read_text().replace(
                    f"[hosts.c{mode}]\n", f'[hosts.c{mode}]\nscheduler = "slurm"\nnode_login = "{mode}"\n'
                )
            )
        slurm_start(lab)  # the first job after slurmd registers pays for Slurm's own warm-up
        cluster.wait_empty()
        for rep in range(args.reps):
            for mode in ("yes", "no") if rep % 2 == 0 else ("no", "yes"):
                samples[mode].append(float(nbremote_up(lab, 18000 + rep, f"c{mode}")["first_200"]))
                end_rep(lab, cluster, f"c{mode}")
            print(f"rep {rep + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in samples.items()), flush=True)
        cluster.stop()
    finally:
        lab.teardown()
    med = {k: statistics.median(v) for k, v in samples.items()}
    ratios = [a / b for a, b in zip(samples["yes"], samples["no"])]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "slurm_node_login.json").write_text(
        json.dumps({"samples": samples, "median": med, "ratios": ratios}, indent=1)
    )
    print("\n| what | median | min | max |\n|---|---:|---:|---:|")
    for key, label in (
        ("yes", "`up --slurm` with node login (Jupyter on the node's loopback)"),
        ("no", '`up --slurm` with node_login = "no" (Jupyter on NodeAddr)'),
    ):
        v = samples[key]
        print(f"| {label} | {med[key]:.2f} s | {min(v):.2f} s | {max(v):.2f} s |")
    print(f"\nratio with / without, per repetition: {', '.join(f'{r:.2f}' for r in ratios)}")
    print(f"median ratio {statistics.median(ratios):.2f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument(
        "--node-login", action="store_true", help="compare up with and without ssh to the node (pam_slurm_adopt)"
    )
    args = parser.parse_args()
    if args.node_login:
        return node_login(args)
    workdir = Path("/tmp") / f"nbremote-slurm-bench-{int(time.time())}"
    lab = netlab.Lab.build(workdir, lock_timeout=1200)
    samples = {"slurm": [], "jupyter": [], "nbremote": [], "nbremote_exit": []}
    try:
        cluster = slurmlab.SlurmCluster.start(lab)
        slurm_start(lab)  # the first job after slurmd registers pays for Slurm's own warm-up
        cluster.wait_empty()
        for rep in range(args.reps):
            samples["slurm"].append(slurm_start(lab))
            cluster.wait_empty()
            samples["jupyter"].append(jupyter_start(lab))
            up = nbremote_up(lab, 18000 + rep)
            samples["nbremote"].append(up["first_200"])
            samples["nbremote_exit"].append(up["exited"])
            end_rep(lab, cluster, "server")
            print(f"rep {rep + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in samples.items()), flush=True)
        cluster.stop()
    finally:
        lab.teardown()
    med = {k: statistics.median(v) for k, v in samples.items()}
    bound = med["slurm"] + med["jupyter"] + 1.0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "slurm.json").write_text(json.dumps({"samples": samples, "median": med, "bound": bound}, indent=1))
    print("\n| what | median | min | max |\n|---|---:|---:|---:|")
    for key, label in (
        ("slurm", "Slurm: `sbatch --wrap true` until it runs"),
        ("jupyter", "Jupyter's start-up on the node"),
        ("nbremote", "`nbremote up --slurm` to the first 200 through the tunnel"),
        ("nbremote_exit", "`nbremote up --slurm` to its exit"),
    ):
        v = samples[key]
        print(f"| {label} | {med[key]:.2f} s | {min(v):.2f} s | {max(v):.2f} s |")
    verdict = "met" if med["nbremote"] <= bound else "missed"
    print(f"\ntarget: Slurm + Jupyter + 1 s = {bound:.2f} s; nbremote {med['nbremote']:.2f} s: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
