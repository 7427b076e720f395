"""cli.services: which broker a run uses, and what it says about it."""

from __future__ import annotations

import uuid

import pytest

from cli import services


def test_the_broker_url_is_shown_without_its_password(capsys: pytest.CaptureFixture[str]) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    with services.broker(f"redis://:{password}@127.0.0.1:{services.free_port()}/0") as url:  # nothing listens
        assert services.redis_answers(url)
    said = capsys.readouterr().out
    assert "no Redis answers at redis://:**@127.0.0.1:" in said and password not in said
    with pytest.raises(SystemExit) as refused, services.broker(f"redis://:{password}@192.0.2.1:6379/0"):
        pass  # 192.0.2.1 is TEST-NET-1, which never answers; a remote broker is not replaced
    assert "the broker at redis://:**@192.0.2.1:6379/0 does not answer" in str(refused.value)
    assert password not in str(refused.value)
