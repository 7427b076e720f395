"""What the benchmark scripts share: data folders, statistics, memory readings, tables and JSON."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from classifier.files import iter_image_files

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("CATSDOGS_DATA", ROOT.parent / "shared" / "data")).resolve()  # as the tests
WORK_DIR = ROOT / "var" / "bench"
# The two photo sets every benchmark reads: 128x128 test photos and full-size photos.
DATA_SETS = {"test": SHARED_DATA / "catsdogs" / "test", "fullres": SHARED_DATA / "catsdogs-fullres"}
PG_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/catsdogs_bench")


def repeated_folder(source: Path, min_images: int, work_dir: Path = WORK_DIR) -> Path:
    """A cat/ and dog/ folder holding `source`'s images repeated until there are at least `min_images`.

    The copies are hard links (no image data is copied) named r<k>-<name>, so every path is distinct;
    a folder built before for the same source and count is reused.
    """
    images = sorted(iter_image_files(source))
    repeats = max(1, -(-min_images // len(images)))
    dest = work_dir / f"{source.name}-x{repeats}"
    if dest.is_dir() and sum(1 for _ in iter_image_files(dest)) == repeats * len(images):
        return dest
    for k in range(repeats):
        for image in images:
            target = dest / image.parent.name / f"r{k}-{image.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                _link(image, target)
    return dest


def _link(image: Path, target: Path) -> None:
    try:
        os.link(image, target)
    except OSError:  # another filesystem
        target.symlink_to(image.resolve())


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process in MB (VmHWM: its peak so far), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def child_pids(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        children.extend(int(p) for p in text)
    return children


class MemorySampler:
    """Samples the resident memory of some processes every `interval` seconds in a thread."""

    def __init__(self, pids: Callable[[], list[int]], interval: float = 0.5) -> None:
        self._pids, self._interval = pids, interval
        self.samples: list[tuple[float, dict[int, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.perf_counter()
        while not self._stop.wait(self._interval):
            readings = {}
            for pid in self._pids():
                try:
                    readings[pid] = rss_mb(pid)
                except OSError:  # exited meanwhile
                    pass
            self.samples.append((time.perf_counter() - start, readings))

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def environment() -> dict[str, Any]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "git_commit": commit.stdout.strip() or None,
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> None:
    """Print rows as an aligned table; columns are (key, header, format spec)."""
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        cells.append([_cell(row.get(key), spec) for key, _, spec in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for n, line in enumerate(cells):
        aligned = [c.rjust(w) if spec else c.ljust(w) for c, w, (_, _, spec) in zip(line, widths, columns, strict=True)]
        print("  ".join(aligned).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def _cell(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    return format(value, spec) if spec else str(value)


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


def fresh_sqlite(path: Path) -> str:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return f"sqlite:///{path}"


def fresh_postgres(url: str) -> str:
    parsed = make_url(url)
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{parsed.database}"'))
    admin.dispose()
    return url


def migrate_fresh(url: str, store: Path) -> None:
    """Create the schema at `url` and register the reference model, installed into an emptied `store`."""
    from cli.main import migrate
    from settings import Settings

    if store.exists():
        shutil.rmtree(store)
    migrate(Settings(database_url=url, model_store=store))
