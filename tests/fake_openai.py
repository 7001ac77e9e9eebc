"""A small local server that speaks OpenAI chat completions with scripted answers."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Script:
    """Answers, used in order; the last one repeats. Each is one of
    ``("text", str)``, ``("status", int)``, ``("hang", seconds)``, ``("garbage", bytes)``,
    or ``("fn", f)`` where ``f(request_body)`` returns one of the others."""

    answers: deque[tuple[str, Any]] = field(default_factory=deque)
    requests: list[dict[str, Any]] = field(default_factory=list)
    stray: list[dict[str, Any]] = field(default_factory=list)
    """POSTs that were no chat completion (no JSON object with ``messages``):
    path, headers, peer and body head. Answered 400, as OpenAI does, and kept
    out of ``requests`` (any local process may reach a loopback port)."""
    times: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next(self) -> tuple[str, Any]:
        with self.lock:
            if len(self.answers) > 1:
                return self.answers.popleft()
            return self.answers[0] if self.answers else ("text", "none")


def completion(text: str, model: str) -> bytes:
    return json.dumps({
        "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }).encode()  # fmt: skip


def make_handler(script: Script) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def answer(self, status: int, payload: bytes, *extra: tuple[str, str]) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            for name, value in extra:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(payload)

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                headers = {k.lower(): v for k, v in self.headers.items()}
                seen = {"path": self.path, "headers": headers,
                        "peer": self.client_address, "body": raw[:200]}  # fmt: skip
                with script.lock:
                    script.stray.append(seen)
                error = {"message": "'messages' is a required property",
                         "type": "invalid_request_error"}  # fmt: skip
                self.answer(400, json.dumps({"error": error}).encode())
                return
            with script.lock:
                script.requests.append(body)
                script.times.append(time.monotonic())
            kind, value = script.next()
            if kind == "fn":
                kind, value = value(body)
            if kind == "hang":
                time.sleep(value)
                kind, value = "text", "too late"
            if kind == "status":
                error = {"message": f"scripted {value}"}
                retry = [("retry-after-ms", "50")] if value == 429 else []
                self.answer(value, json.dumps({"error": error}).encode(), *retry)
            elif kind == "garbage":
                self.answer(200, value)
            else:
                self.answer(200, completion(value, body.get("model", "m")))

    return Handler


@contextmanager
def fake_openai(*answers: tuple[str, Any], port: int = 0) -> Iterator[tuple[str, Script]]:
    """Serve on loopback (a free port unless ``port``); yields ``(base_url, script)``."""
    script = Script(deque(answers))
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(script))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1", script
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
