"""A real HTTP receiver of webhooks for tests: a ThreadingHTTPServer on a free port, in a thread."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float
    answered: int | None  # None: never answered


class Receiver:
    """A real HTTP server on a free port, in a thread: it records every POST and answers `fail_code` to the
    first `fail_first`, then 200; with `hang`, it never answers (until closed)."""

    def __init__(self, fail_first: int = 0, hang: bool = False, fail_code: int = 500) -> None:
        self.requests: list[Received] = []
        self.fail_first, self.fail_code, self.hang, self.closing = fail_first, fail_code, hang, threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/catsdogs?token=receivers-own-token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                failing = len(receiver.requests) < receiver.fail_first
                code = None if receiver.hang else receiver.fail_code if failing else 200
                receiver.requests.append(Received(dict(self.headers), body, time.monotonic(), code))
                if code is None:
                    receiver.closing.wait(60)
                    return
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def receivers() -> Iterator[Callable[..., Receiver]]:
    """Yields `start(fail_first=0, hang=False, fail_code=500)`, which starts a Receiver; all are closed at the end."""
    started: list[Receiver] = []

    def start(fail_first: int = 0, hang: bool = False, fail_code: int = 500) -> Receiver:
        started.append(Receiver(fail_first, hang, fail_code))
        return started[-1]

    try:
        yield start
    finally:
        for receiver in started:
            receiver.close()
