"""What a CPU forward pass pays for the memory it frees: images/s and page faults per batch of 256,
with glibc's default allocator settings and with classifier.serving.keep_freed_memory, by forward batch.

    python -m bench.faults [--forward-batches 32 64 128 256] [--precisions bf16 fp32] [--repeats 15]
                           [--json var/bench/faults.json]

The reference model in the `eager` backend, one thread, on the 256 first test photos; each setting in
a fresh process, since the allocator's settings cannot be undone. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import DATA_SETS, WORK_DIR, environment, median, print_table, write_json
from classifier.files import iter_image_files
from classifier.model import native_bf16
from classifier.preprocess import load_image
from classifier.serving import keep_freed_memory, predict
from classifier.store import install_reference, load
from settings import get_settings

IMAGES = 256


def measure(store: Path, forward: int, precision: str, kept: bool, repeats: int) -> dict[str, Any]:
    """Run in a fresh process: median images/s, system time and page faults of one batch of IMAGES."""
    if kept:
        keep_freed_memory()
    torch.set_num_threads(1)
    model = load(store).serving("eager", forward, precision)
    images = [load_image(p, 64) for p in sorted(iter_image_files(DATA_SETS["test"]))[:IMAGES]]
    device = torch.device("cpu")
    for _ in range(3):
        predict(model, images, device)
    seconds, system, faults = [], [], []
    for _ in range(repeats):
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        predict(model, images, device)
        after = resource.getrusage(resource.RUSAGE_SELF)
        seconds.append(time.perf_counter() - start)
        system.append(after.ru_stime - before.ru_stime)
        faults.append(after.ru_minflt - before.ru_minflt)
    return {
        "precision": precision, "forward_batch": forward, "allocator": "kept" if kept else "glibc default",
        "images_per_second": IMAGES / median(seconds), "system_ms": 1000 * median(system),
        "page_faults": median(faults),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--forward-batches", nargs="+", type=int, default=[32, 64, 128, 256])
    native = ["bf16", "fp32"] if native_bf16("cpu") else ["fp32"]
    parser.add_argument("--precisions", nargs="+", choices=("bf16", "fp32"), default=native)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", type=Path, default=WORK_DIR / "faults.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: "precision,forward,kept" in a child
    args = parser.parse_args(argv)
    store = WORK_DIR / "faults-store"  # the reference model, installed on the first run
    if args.one:
        precision, forward, kept = args.one.split(",")
        print(json.dumps(measure(store, int(forward), precision, kept == "1", args.repeats)))
        return
    install_reference(get_settings().reference_model, store)
    rows = []
    for precision in args.precisions:
        for forward in args.forward_batches:
            for kept in ("0", "1"):
                one = f"{precision},{forward},{kept}"
                command = [sys.executable, "-m", "bench.faults", "--one", one, "--repeats", str(args.repeats)]
                ran = subprocess.run(command, capture_output=True, text=True, check=True)
                rows.append(json.loads(ran.stdout.strip().splitlines()[-1]))
                print(rows[-1], flush=True)
    print(f"\nforward pass of {IMAGES} test photos, eager, 1 thread, medians of {args.repeats}")
    print_table(rows, [("precision", "precision", ""), ("forward_batch", "forward batch", "d"),
                       ("allocator", "allocator", ""), ("images_per_second", "img/s", ".0f"),
                       ("system_ms", "system ms", ".0f"), ("page_faults", "faults", ".0f")])  # fmt: skip
    write_json(args.json, {"environment": environment(), "rows": rows})


if __name__ == "__main__":
    main()
