"""A small synchronous LSP client over stdio (Content-Length framing): the tests and
bench/lsp_latency.py talk to `ftdsl lsp` through it, as an editor would.

It spawns `python -m ftdsl lsp`, writes requests and notifications, and reads the server's
messages on a thread: `request()` waits for the matching response, `wait_notification()` for a
notification of a method (e.g. `textDocument/publishDiagnostics`).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time


class LspClient:
    def __init__(self, args=(), cwd=None, env=None):
        self.proc = subprocess.Popen([sys.executable, *args, "-m", "ftdsl", "lsp"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                                     env=env or dict(os.environ))
        self.next_id = 0
        self.responses: dict[int, dict] = {}
        self.notes: queue.Queue = queue.Queue()
        self.lock = threading.Condition()
        self.stderr = b""
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        self.stderr = self.proc.stderr.read()

    def _read(self):
        out = self.proc.stdout
        while True:
            headers = {}
            while True:
                line = out.readline()
                if not line:
                    return
                line = line.strip()
                if not line:
                    break
                k, _, v = line.decode("ascii").partition(":")
                headers[k.strip().lower()] = v.strip()
            body = out.read(int(headers["content-length"]))
            msg = json.loads(body.decode("utf-8"))
            if "id" in msg and "method" not in msg:
                with self.lock:
                    self.responses[msg["id"]] = msg
                    self.lock.notify_all()
            elif "id" in msg:  # a request from the server (e.g. workspace/configuration): answer null
                self._send({"jsonrpc": "2.0", "id": msg["id"], "result": None})
            else:
                self.notes.put(msg)

    def _send(self, msg: dict):
        body = json.dumps(msg).encode("utf-8")
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.proc.stdin.flush()

    def notify(self, method: str, params) -> None:
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def request(self, method: str, params, timeout: float = 20) -> dict:
        self.next_id += 1
        i = self.next_id
        self._send({"jsonrpc": "2.0", "id": i, "method": method, "params": params})
        deadline = time.monotonic() + timeout
        with self.lock:
            while i not in self.responses:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no response to {method} in {timeout} s")
                self.lock.wait(left)
            return self.responses.pop(i)

    def wait_notification(self, method: str, timeout: float = 20, where=None) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {method} in {timeout} s")
            try:
                msg = self.notes.get(timeout=left)
            except queue.Empty:
                continue
            if msg.get("method") == method and (where is None or where(msg["params"])):
                return msg["params"]

    def initialize(self, root_uri=None, capabilities=None) -> dict:
        r = self.request("initialize", {"processId": os.getpid(), "rootUri": root_uri,
                                        "capabilities": capabilities or {}})
        self.notify("initialized", {})
        return r

    def close(self) -> int:
        try:
            self.request("shutdown", None, timeout=10)
            self.notify("exit", None)
            return self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
