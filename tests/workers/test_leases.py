"""One thread renews every lease a worker process holds, and only while it holds it."""

from __future__ import annotations

import threading
from collections import Counter

from workers.leases import LeaseRenewer


class Renewals:
    def __init__(self) -> None:
        self.counts: Counter[tuple[int, str]] = Counter()
        self.threads: set[int] = set()
        self.changed = threading.Condition()

    def __call__(self, batch_id: int, holder: str) -> None:
        with self.changed:
            self.counts[batch_id, holder] += 1
            self.threads.add(threading.get_ident())
            self.changed.notify_all()

    def wait_for(self, batch_id: int, holder: str, times: int) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.counts[batch_id, holder] >= times, timeout=30)


def test_every_held_lease_is_renewed_by_one_thread() -> None:
    renewals = Renewals()
    renewer = LeaseRenewer(renewals)
    with renewer.holding(1, "host:1", interval=0.01), renewer.holding(2, "host:1", interval=0.02):
        assert renewals.wait_for(1, "host:1", 3)
        assert renewals.wait_for(2, "host:1", 3)
    assert len(renewals.threads) == 1


def test_a_released_lease_is_not_renewed_again() -> None:
    renewals = Renewals()
    renewer = LeaseRenewer(renewals)
    with renewer.holding(1, "host:1", interval=0.01):
        assert renewals.wait_for(1, "host:1", 1)
    after_release = renewals.counts[1, "host:1"]
    with renewer.holding(2, "host:1", interval=0.01):  # the same thread goes on, for the next batch only
        assert renewals.wait_for(2, "host:1", 5)
    # a renewal already under way when the lease was given back may still land, no later one
    assert renewals.counts[1, "host:1"] <= after_release + 1


def test_a_failed_renewal_is_logged_and_the_next_one_still_runs() -> None:
    renewals = Renewals()
    failures = iter([RuntimeError("database down")])

    def flaky(batch_id: int, holder: str) -> None:
        if (failure := next(failures, None)) is not None:
            raise failure
        renewals(batch_id, holder)

    with LeaseRenewer(flaky).holding(7, "host:2", interval=0.01):
        assert renewals.wait_for(7, "host:2", 2)
