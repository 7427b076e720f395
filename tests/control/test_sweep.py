"""The sweeper's view of the broker: its marker key tells when the broker lost every queued message."""

from __future__ import annotations

from dispatch import broker_kept_its_queue, make_sender_app
from settings import Settings
from tests.conftest import RedisServer


def test_the_marker_tells_an_emptied_broker_from_one_that_kept_its_queue(private_redis: RedisServer) -> None:
    app = make_sender_app(Settings(broker_url=private_redis.url))
    assert not broker_kept_its_queue(app, "gpu")  # a new broker: nothing was there
    assert broker_kept_its_queue(app, "gpu")
    assert broker_kept_its_queue(app, "gpu")
    private_redis.restart()  # killed and started empty, as a Redis without a disk comes back
    assert not broker_kept_its_queue(app, "gpu")
    assert broker_kept_its_queue(app, "gpu")
    assert not broker_kept_its_queue(app, "other-queue")  # one marker per queue
