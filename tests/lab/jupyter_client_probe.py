"""Run on the laptop (inside its namespace) to talk to Jupyter through the tunnel.

usage: python jupyter_client_probe.py status URL_BASE TOKEN
       python jupyter_client_probe.py run URL_BASE TOKEN CODE
`status` prints the HTTP status of /api/status with and without the token;
`run` starts a kernel, executes CODE and prints its stdout, then leaves the
kernel running (a test checks it survives the client). Uses websocket-client,
which jupyter_server itself depends on.
"""

import json
import sys
import urllib.error
import urllib.request
import uuid

import websocket


def http(method, url, token=None, body=None):
    request = urllib.request.Request(url, method=method, data=body)
    if token:
        request.add_header("Authorization", "token " + token)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def run(base, token, code):
    status, body = http("POST", base + "/api/kernels", token, b"{}")
    assert status == 201, status
    kernel = json.loads(body)["id"]
    ws = websocket.create_connection(
        base.replace("http://", "ws://") + "/api/kernels/%s/channels?token=%s" % (kernel, token), timeout=30
    )
    msg_id = uuid.uuid4().hex
    ws.send(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "msg_type": "execute_request",
                    "username": "t",
                    "session": uuid.uuid4().hex,
                    "version": "5.3",
                },
                "parent_header": {},
                "metadata": {},
                "channel": "shell",
                "content": {
                    "code": code,
                    "silent": False,
                    "store_history": False,
                    "user_expressions": {},
                    "allow_stdin": False,
                },
            }
        )
    )
    out = []
    while True:
        msg = json.loads(ws.recv())
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append("ERROR " + msg["content"]["ename"])
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    ws.close()
    print(json.dumps({"kernel": kernel, "stdout": "".join(out)}))


if __name__ == "__main__":
    command, base, token = sys.argv[1:4]
    if command == "status":
        print(
            json.dumps(
                {
                    "with_token": http("GET", base + "/api/status", token)[0],
                    "without_token": http("GET", base + "/api/status")[0],
                }
            )
        )
    else:
        run(base, token, sys.argv[4])
