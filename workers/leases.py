"""The leases of the batches a worker process runs, renewed by one thread of the process.

A thread started and joined for every batch cost about 5% of a benchmark worker's CPU
(docs/performance.md, "Fleet scale"); this one starts with the first batch and then sleeps
until a lease is due.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class _Held:
    holder: str
    interval: float  # seconds between renewals
    due: float  # time.monotonic() of the next renewal


class LeaseRenewer:
    """Renews, every `interval` seconds, the lease of each batch held through `holding`."""

    def __init__(self, renew: Callable[[int, str], None]) -> None:
        self._renew = renew  # (batch id, holder): renew its lease in the database
        self._held: dict[int, _Held] = {}
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def holding(self, batch_id: int, holder: str, interval: float) -> Iterator[None]:
        """Keep the batch's lease renewed while the body runs."""
        with self._changed:
            self._held[batch_id] = _Held(holder, interval, time.monotonic() + interval)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="lease-renewer", daemon=True)
                self._thread.start()
            self._changed.notify()
        try:
            yield
        finally:
            with self._changed:
                del self._held[batch_id]

    def _run(self) -> None:
        while True:
            for batch_id, holder in self._wait_for_due():
                try:
                    self._renew(batch_id, holder)
                except Exception:
                    log.warning("batch %s: could not renew the lease", batch_id, exc_info=True)

    def _wait_for_due(self) -> list[tuple[int, str]]:
        """The batches whose renewal is due, once there are any; each is next due an interval later."""
        with self._changed:
            while True:
                now = time.monotonic()
                due = [(batch_id, held) for batch_id, held in self._held.items() if held.due <= now]
                if due:
                    for _, held in due:
                        held.due = now + held.interval
                    return [(batch_id, held.holder) for batch_id, held in due]
                self._changed.wait(min((held.due - now for held in self._held.values()), default=None))
