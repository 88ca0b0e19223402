"""The server's kernel in a local editor: `nbremote kernels install server` writes a kernel
spec on the laptop, and a real jupyter_client there starts it by name, runs code that says
where it runs, lives through a real outage (packets dropped on the link) with its state,
and shuts it down, leaving nothing on the server."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time

import netlab
from netlab import ALICE, LAB_PYTHON, LAPTOP_ADDR, SERVER_ADDR, SERVER_HOST_ALIAS

from test_up import wait_until

# The address the kernel's machine uses toward the laptop, and who runs it.
WHERE = (
    "import getpass, socket\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    f"s.connect(('{LAPTOP_ADDR}', 9))\n"
    "print(s.getsockname()[0], getpass.getuser())\n"
    "marker = 'state kept'"
)

# A local jupyter_client, as JupyterLab, `jupyter console` or VS Code use it.
CLIENT = """
import json, sys
from jupyter_client.manager import start_new_kernel

km, kc = start_new_kernel(kernel_name=sys.argv[1], startup_timeout=120)

def run(code, timeout):
    out = []
    def hook(msg):
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
    reply = kc.execute_interactive(code, timeout=timeout, output_hook=hook)
    return {"status": reply["content"]["status"], "out": "".join(out)}

print(json.dumps(run(json.loads(sys.stdin.readline()), 60)), flush=True)
print(json.dumps(run(json.loads(sys.stdin.readline()), 120)), flush=True)
kc.stop_channels()
km.shutdown_kernel()
print(json.dumps({"alive": km.is_alive()}), flush=True)
"""


def _remote_kernels(lab) -> list[str]:
    done = lab.server_exec(["pgrep", "-u", ALICE, "-f", "ipykernel_launcher"])
    return done.stdout.split()


def test_a_local_jupyter_client_runs_code_on_the_server_through_an_outage(lab, lossy_link):
    installed = lab.nbremote("kernels", "install", SERVER_HOST_ALIAS, "--json", timeout=120)
    assert installed.returncode == 0, installed.stderr
    spec = json.loads(installed.stdout)
    assert spec["name"] == f"nbremote-{SERVER_HOST_ALIAS}"
    listed = lab.laptop_exec([str(LAB_PYTHON), "-m", "jupyter", "kernelspec", "list", "--json"])
    assert spec["name"] in json.loads(listed.stdout)["kernelspecs"], listed.stdout

    client = lab.laptop_popen(
        [str(LAB_PYTHON), "-c", CLIENT, spec["name"]],
        env=lab.nbremote_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(client.stderr), daemon=True).start()
    answers: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [answers.put(json.loads(line)) for line in client.stdout], daemon=True).start()

    def ask(code: str, timeout: float) -> dict:
        client.stdin.write(json.dumps(code) + "\n")
        client.stdin.flush()
        try:
            return answers.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no answer within {timeout} s; the kernel's log:\n{''.join(log)}") from None

    try:
        began = time.monotonic()
        first = ask(WHERE, 180)
        started = time.monotonic() - began
        assert first == {"status": "ok", "out": f"{SERVER_ADDR} {ALICE}\n"}, (first, "".join(log))
        assert len(_remote_kernels(lab)) == 1

        lossy_link.set_down(True)
        cut = time.monotonic()
        assert wait_until(lambda: any("reconnecting" in line for line in log), 60), "".join(log)
        lossy_link.set_down(False)
        assert wait_until(lambda: any("back after" in line for line in log), 60), "".join(log)
        healed = time.monotonic() - cut
        after = ask("print(marker)", 150)
        assert after == {"status": "ok", "out": "state kept\n"}, (after, "".join(log))

        client.stdin.close()
        assert answers.get(timeout=60) == {"alive": False}
        assert client.wait(timeout=30) == 0
        assert wait_until(lambda: not _remote_kernels(lab), 15), "the kernel on the server is still running"
        print(f"kernel up and first execute in {started:.1f} s; outage of {healed:.1f} s healed, state kept")
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        removed = lab.nbremote("kernels", "remove", SERVER_HOST_ALIAS)
    assert removed.returncode == 0, removed.stderr
    assert not lab.user(netlab.LAPTOP_USER).home.joinpath(".local/share/jupyter/kernels", spec["name"]).exists()
