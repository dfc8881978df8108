"""A ComfyUI stand-in child for the wrapper tests: answers /system_stats while CONTROL holds "ok", stops
answering ("hang"), or exits with status 3 ("die"). Records its argv, environment and signals in RECORD."""

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

control, record = os.environ["FAKE_COMFY_CONTROL"], os.environ["FAKE_COMFY_RECORD"]
port = int(sys.argv[sys.argv.index("--port") + 1])


def mode() -> str:
    try:
        with open(control) as f:
            return f.read().strip()
    except OSError:
        return "ok"


def note(**kv):
    with open(record, "a") as f:
        f.write(json.dumps(kv) + "\n")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        while mode() == "hang":
            time.sleep(0.05)
        body = json.dumps({"system": {"os": "posix"}, "devices": []}).encode()
        self.send_response(200 if self.path == "/system_stats" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def on_term(signum, frame):
    note(signal=signum)
    os._exit(0)


def watch():
    while True:
        if mode() == "die":
            os._exit(3)
        time.sleep(0.05)


signal.signal(signal.SIGTERM, on_term)
note(pid=os.getpid(), argv=sys.argv[1:], env=dict(os.environ))
print("fake comfyui log line", flush=True)
threading.Thread(target=watch, daemon=True).start()
if mode() != "never":
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
time.sleep(3600)
