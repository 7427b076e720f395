"""How `catsdogs run` and `catsdogs submit` show a job's progress: a bar on a terminal, else plain lines."""

from __future__ import annotations

import io
from typing import Any

import pytest

from cli import progress


def _job(settled: int, total: int, status: str = "running", rate: float | None = 512.0, listed: bool = True) -> dict:  # type: ignore[type-arg]
    counts = {"total": total, "done": settled, "failed": 0, "remaining": total - settled, "skipped": 0}
    return {"id": 7, "status": status, "counts": counts, "listing_complete": listed, "images_per_second": rate}


def test_a_plain_line_gives_counts_rate_and_eta() -> None:
    assert progress.plain_line(_job(1234, 20_000)) == "job 7 running: 1,234 / 20,000 images, 512/s, ETA 37 s"
    assert progress.plain_line(_job(1234, 200_000)).endswith(", ETA 6 min 28 s")
    assert progress.plain_line(_job(1234, 2_000_000)).endswith(", ETA 1 h 05 min")
    assert progress.plain_line(_job(19_000, 20_000)) == "job 7 running: 19,000 / 20,000 images, 512/s, ETA 2 s"
    listing = progress.plain_line(_job(100, 2048, listed=False))
    assert listing == "job 7 running: 100 / 2,048+ images, 512/s, ETA ?"
    assert progress.plain_line(_job(0, 0, "queued", rate=None)) == "job 7 queued: 0 / 0 images, -/s, ETA ?"


def test_plain_lines_are_periodic_and_show_every_status(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    states: list[tuple[float, dict[str, Any]]] = [
        (0, _job(0, 100, "queued", None)), (1, _job(10, 100)), (2, _job(20, 100)),
        (6.5, _job(60, 100)), (7, _job(70, 100)), (8, _job(100, 100, "succeeded")),
    ]  # fmt: skip
    with progress.shown(out) as show:
        for at, job in states:
            now[0] = 1000 + at
            show(job)
    settled = [line.split(": ")[1].split(" /")[0] for line in out.getvalue().splitlines()]
    assert settled == ["0", "10", "60", "100"]  # the status changed, changed, 5 s later, the end
    assert out.getvalue().splitlines()[-1] == "job 7 succeeded: 100 / 100 images, 512/s, ETA 0 s"


def test_a_terminal_gets_a_bar_with_rate_and_eta() -> None:
    out = io.StringIO()
    with progress.shown(out, terminal=True) as show:
        show(_job(1234, 20_000))
    text = out.getvalue()
    assert "\x1b[" in text and "━" in text  # drawn in place, with a bar
    assert "job 7 running" in text and "1,234 / 20,000 images, 512/s, ETA 37 s" in text
