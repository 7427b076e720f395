"""A job's progress as the command line shows it: a bar with rate and ETA on a terminal, else a plain line
every few seconds ("job 7 running: 1,234 / 20,000 images, 512/s, ETA 37 s"), which logs and CI keep readable.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

LINE_EVERY = 5.0  # seconds between plain lines while nothing but the counts changes
FINAL_STATUSES = {"succeeded", "failed", "partially_failed", "cancelled"}
Show = Callable[[dict[str, Any]], None]


def counts_text(job: dict[str, Any]) -> str:
    """'1,234 / 20,000 images (3 failed, 2 skipped)'; the total ends in '+' while the folder is being listed."""
    c = job["counts"]
    total = f"{c['total']:,}" + ("" if job["listing_complete"] else "+")
    notes = [f"{c['failed']:,} failed"] if c["failed"] else []
    notes += [f"{c['skipped']:,} skipped"] if c.get("skipped") else []
    return f"{c['done'] + c['failed']:,} / {total} images" + (f" ({', '.join(notes)})" if notes else "")


def rate_text(job: dict[str, Any]) -> str:
    rate = job.get("images_per_second")
    return f"{rate:,.0f}/s" if rate else "-/s"


def eta_text(job: dict[str, Any]) -> str:
    """The time left at the job's average rate so far; '?' while unknown (not started, or still listing)."""
    rate, remaining = job.get("images_per_second"), job["counts"]["remaining"]
    if job["status"] in FINAL_STATUSES:
        return "0 s"
    if not rate or not job["listing_complete"]:
        return "?"
    return duration_text(remaining / rate)


def duration_text(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:02.0f} min"


def plain_line(job: dict[str, Any]) -> str:
    return f"job {job['id']} {job['status']}: {counts_text(job)}, {rate_text(job)}, ETA {eta_text(job)}"


@contextlib.contextmanager
def shown(out: TextIO, terminal: bool | None = None) -> Iterator[Show]:
    """A function to call with each new state of a job (GET /jobs/{id}): it draws a bar when `out` is a
    terminal, else prints plain lines (_Lines)."""
    if out.isatty() if terminal is None else terminal:
        with _bar(out) as show:
            yield show
    else:
        yield _Lines(out)


class _Lines:
    """A line at most every LINE_EVERY seconds, and at once when the status changes (the last state's too)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.printed_at = -LINE_EVERY
        self.status: str | None = None

    def __call__(self, job: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self.printed_at >= LINE_EVERY or job["status"] != self.status:
            print(plain_line(job), file=self.out, flush=True)
            self.printed_at, self.status = now, job["status"]


@contextlib.contextmanager
def _bar(out: TextIO) -> Iterator[Show]:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    columns = [TextColumn("job {task.fields[id]} {task.fields[status]}"), BarColumn(),
               TextColumn("{task.fields[counts]}, {task.fields[rate]}, ETA {task.fields[eta]}")]  # fmt: skip
    with Progress(*columns, console=Console(file=out, force_terminal=True), auto_refresh=False) as bar:
        task = bar.add_task("job", total=None, id="", status="", counts="", rate="", eta="")

        def show(job: dict[str, Any]) -> None:
            c = job["counts"]
            bar.update(
                task,
                completed=c["done"] + c["failed"],
                total=c["total"] or None,
                id=job["id"],
                status=job["status"],
                counts=counts_text(job),
                rate=rate_text(job),
                eta=eta_text(job),
            )
            bar.refresh()

        yield show
