#!/usr/bin/env python3
"""The hello job: a small HTTP server (python3 is on every cloud image that runs cloud-init,
and it costs ~10 MB where a Node server costs ~45 MB, which matters at 100 local VMs)."""
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

with open(sys.argv[1]) as f:
    cfg = json.load(f)

if cfg.get("crash_on_start"):
    print("crash_on_start is set: exiting", file=sys.stderr)
    sys.exit(1)

draining_marker = os.path.join(os.environ.get("DIRECTOR_RUN", "/nonexistent"), "web.draining")
version = cfg["version"][:12]


class Handler(BaseHTTPRequestHandler):
    def _send(self, status, body):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            if os.path.exists(draining_marker):
                self._send(503, "draining\n")
            elif cfg.get("healthy", True):
                self._send(200, "ok\n")
            else:
                self._send(503, "unhealthy: the healthy property is false\n")
            return
        self._send(200, f"{cfg['greeting']} from {cfg['instance']} ({cfg['release']} {version}, az {cfg['az']})\n")

    def log_message(self, fmt, *args):
        pass


server = ThreadingHTTPServer((cfg["address"], int(cfg["port"])), Handler)
server.daemon_threads = True


def stop(signum, frame):
    threading.Thread(target=server.shutdown).start()


signal.signal(signal.SIGTERM, stop)
print(f"listening on {cfg['address']}:{cfg['port']} as {cfg['instance']} ({version})", flush=True)
server.serve_forever()
