"""Extra training data (`trainer fit --extra-data FILE.csv`), such as `catsdogs corrections export` writes.

Each file is a `path,label[,...]` CSV; its samples join the train split only (trainer.data.add_extra_train).
Its optional job_id column says which job each corrected result came from: the model card's `corrections`
section lists those jobs, with the files and their sha256, so that a model says what people taught it.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from classifier.model import CLASSES
from classifier.store import file_sha256
from trainer.data import ExtraUse, Sample, read_csv_samples


@dataclass(frozen=True)
class ExtraData:
    samples: list[Sample]  # every row of every file, in order
    jobs: dict[str, int]  # the job of each file (by real path) whose row names one
    files: list[dict[str, Any]]  # {"path", "sha256", "rows"} per file


def read_extra_data(files: Sequence[Path]) -> ExtraData:
    """Read the CSVs (DataSourceError naming a bad row); the job_id column, where there is one, is kept too."""
    samples: list[Sample] = []
    jobs: dict[str, int] = {}
    described = []
    for file in files:
        rows = read_csv_samples(file)
        samples += rows
        for (path, _), job in zip(rows, _job_ids(file), strict=True):
            if job is not None:
                jobs[os.path.realpath(path)] = job
        described.append({"path": str(file.resolve()), "sha256": file_sha256(file), "rows": len(rows)})
    return ExtraData(samples, jobs, described)


def _job_ids(file: Path) -> list[int | None]:
    """Each row's job_id column (None where it is absent or not a job id), in row order."""
    with open(file, newline="") as f:
        reader = csv.DictReader(f)
        reader.fieldnames = [c.strip().lower() for c in reader.fieldnames or []]
        return [int(text) if (text := (row.get("job_id") or "").strip()).isdigit() else None for row in reader]


def corrections_card(extra: ExtraData, use: ExtraUse) -> dict[str, Any]:
    """The model card's `corrections` section: the extra samples trained on, by label, and the jobs they came from.

    samples: extra samples in the train split; relabelled_train_images: train images of --data whose label an
    extra row replaced (or repeated); left_out_val_or_test: extra rows for val or test images, not used.
    """
    labels = Counter(CLASSES[label] for _, label in use.used)
    jobs = sorted({job for path, _ in use.used if (job := extra.jobs.get(os.path.realpath(path))) is not None})
    return {
        "samples": len(use.used),
        "by_label": {name: labels[name] for name in CLASSES},
        "jobs": jobs,
        "relabelled_train_images": use.replaced,
        "left_out_val_or_test": use.held_out,
        "files": extra.files,
    }
