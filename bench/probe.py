"""Small clients the benchmark runs *inside* a lab namespace (stdlib only).

bench/run.py passes this file's source with ``python -c SRC SUBCOMMAND ...``,
so the lab users never need to read the repository. Every time stamp printed
is time.monotonic() (CLOCK_MONOTONIC, one clock for the whole machine), so the
harness can compare it with its own t0 across processes and namespaces.

  poll HOST PORT TOKEN|- INTERVAL_S TIMEOUT_S
      Prints ``ready <t>`` once it has checked that nothing answers HTTP on the
      port yet (``open <t>`` if something already does), then starts one
      GET /api/status attempt every INTERVAL_S, each in its own thread
      (staggered, so a slow attempt through a 100 ms tunnel does not delay the
      next one and the resolution stays INTERVAL_S), and prints one JSON line
      with the first HTTP answer: its status (403 without a token means the
      tunnel and Jupyter both answered), the time it arrived, and the first
      time a TCP connect was accepted (the local forward's listener was up).
      Then reads one line from stdin: a token to check with a last GET
      (prints {"verify": status}), or an empty line.
  rtt HOST PORT COUNT
      Median/min TCP connect time (SYN to SYN-ACK: one round trip), seconds.
  download HOST PORT
      GET / and read the whole body; prints bytes and seconds.
  gets HOST PORT TOKEN COUNT
      COUNT sequential GET /api/status, a new TCP connection each (as a
      probe or a fresh browser tab makes); prints total seconds.
  wait HOST PORT[,PORT...] TIMEOUT_S
      Returns once every port accepts a TCP connection (exit 1 on timeout).
  serve PORT FILE
      An HTTP/1.0 server on 127.0.0.1:PORT that answers every GET with FILE,
      sent with sendfile(); prints ``listening`` when ready.
"""

import json
import os
import socket
import statistics
import sys
import threading
import time


def http_status(host, port, token, timeout):
    """(status or None, time the status line arrived, whether connect worked)."""
    connected = False
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            connected = True
            auth = "Authorization: token %s\r\n" % token if token else ""
            sock.sendall(
                (
                    "GET /api/status HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%sConnection: close\r\n\r\n" % (port, auth)
                ).encode()
            )
            data = b""
            while b"\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    return None, time.monotonic(), connected
                data += chunk
            now = time.monotonic()
            parts = data.split(b"\r\n", 1)[0].split()
            if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
                return int(parts[1]), now, connected
            return None, now, connected
    except OSError:
        return None, time.monotonic(), connected


def poll(host, port, token, interval, timeout):
    token = None if token == "-" else token
    port = int(port)
    interval, timeout = float(interval), float(timeout)
    status, _, _ = http_status(host, port, token, 1.0)
    print("%s %.6f" % ("open" if status else "ready", time.monotonic()), flush=True)
    lock = threading.Lock()
    done = threading.Event()
    box = {"first": None, "listen": None, "attempts": 0, "inflight": 0}

    def attempt():
        code, when, connected = http_status(host, port, token, 5.0)
        with lock:
            box["inflight"] -= 1
            if code is not None and (box["first"] is None or when < box["first"][1]):
                box["first"] = (code, when)
                done.set()
            if connected and code is not None and (box["listen"] is None or when < box["listen"]):
                box["listen"] = when  # the watcher lost the race: the answer bounds it

    def connect_watch():
        # A separate cheap watcher for "the local listener accepts": connect only.
        while not done.is_set():
            try:
                with socket.create_connection((host, port), timeout=1.0):
                    now = time.monotonic()
                    with lock:
                        if box["listen"] is None or now < box["listen"]:
                            box["listen"] = now
                    return
            except OSError:
                time.sleep(interval / 2)

    threading.Thread(target=connect_watch, daemon=True).start()
    deadline = time.monotonic() + timeout
    next_at = time.monotonic()
    while not done.is_set() and time.monotonic() < deadline:
        with lock:
            busy = box["inflight"]
        if busy < 64:
            with lock:
                box["inflight"] += 1
                box["attempts"] += 1
            threading.Thread(target=attempt, daemon=True).start()
        next_at += interval
        done.wait(max(0.0, next_at - time.monotonic()))
    # Attempts still in flight may have started earlier and finish a little
    # later with an earlier-or-equal arrival; one interval is enough for them.
    time.sleep(interval)
    with lock:
        first = box["first"]
        out = {
            "status": first[0] if first else None,
            "t": first[1] if first else None,
            "t_listen": box["listen"],
            "attempts": box["attempts"],
        }
    print(json.dumps(out), flush=True)
    line = sys.stdin.readline().strip()
    if line:
        code, _, _ = http_status(host, port, line, 10.0)
        print(json.dumps({"verify": code}), flush=True)


def rtt(host, port, count):
    times = []
    for _ in range(int(count)):
        t = time.monotonic()
        with socket.create_connection((host, int(port)), timeout=5):
            times.append(time.monotonic() - t)
        time.sleep(0.01)
    print(json.dumps({"median": statistics.median(times), "min": min(times), "all": times}))


def download(host, port):
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    t = time.monotonic()
    total = 0
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(b"GET /big.bin HTTP/1.0\r\nHost: x\r\n\r\n")
        while True:
            n = sock.recv_into(view)
            if not n:
                break
            total += n
    print(json.dumps({"bytes": total, "seconds": time.monotonic() - t}))


def gets(host, port, token, count):
    import http.client

    t = time.monotonic()
    codes = []
    for _ in range(int(count)):
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", "/api/status", headers={"Authorization": "token " + token})
        resp = conn.getresponse()
        resp.read()
        codes.append(resp.status)
        conn.close()
    print(json.dumps({"seconds": time.monotonic() - t, "ok": codes.count(200), "count": len(codes)}))


def wait(host, ports, timeout):
    deadline = time.monotonic() + float(timeout)
    for port in ports.split(","):
        while True:
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit(1)
                time.sleep(0.01)


def serve(port, path):
    size = os.path.getsize(path)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", int(port)))
    srv.listen(16)
    print("listening", flush=True)

    def handle(conn):
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            conn.sendall(
                b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % size
            )
            with open(path, "rb") as f:
                conn.sendfile(f)

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


COMMANDS = {"poll": poll, "rtt": rtt, "download": download, "gets": gets, "wait": wait, "serve": serve}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
