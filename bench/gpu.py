"""The GPU check: one command for a CUDA host, under 8 minutes, that writes a table and a JSON.

    python -m bench.gpu                         # on a CUDA host: every part, full size
    python -m bench.gpu --device cpu --quick    # the same code on the CPU, small (what the test suite runs)

1. forward   images/s of the reference network alone, bf16 and fp32, batches of 256, 1,024 and 4,096,
             channels-last, inputs already on the device (the accelerator's ceiling)
2. decode    images/s of the workers' reduced JPEG decode (PIL, one process per core) against nvJPEG
             (torchvision.io.decode_jpeg on the device, in batches of 256, then grayscale and resize on
             the device), over the full-size photos repeated to 20,000
3. system    the worker end to end on the device: `POST /jobs` of the full-size photos repeated to
             20,000, to the last result row (a real API, control plane and one worker; SQLite, a
             private Redis), against the ceilings above: which part bounds it
4. training  one epoch of the reference recipe (`trainer fit`, the 16,000 training photos) on one device,
             bf16 on a GPU: how long the reference model takes to train there
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.common import DATA_SETS, ROOT, SHARED_DATA, WORK_DIR, environment, print_table, repeated_folder, write_json
from classifier.files import iter_image_files
from classifier.model import accelerate
from classifier.preprocess import load_image
from classifier.store import LoadedModel, load_folder

REFERENCE = ROOT / "models" / "reference"


def forward_rate(model: LoadedModel, device: torch.device, batch: int, precision: str, seconds: float) -> float:
    """Images/s of the serving network on `batch` images already on the device, channels-last."""
    net = accelerate(model.net.to(device), "eager", batch, precision)
    size = model.meta["input"]["height"]
    x = torch.rand(batch, 1, size, size, device=device).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        net(x)  # warm-up: cuDNN picks its kernels
        _sync(device)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            net(x)
            done += batch
        _sync(device)
    return done / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _decode_share(paths: list[str]) -> int:
    for path in paths:
        load_image(path, 64)
    return len(paths)


def cpu_decode_rate(paths: list[str], processes: int) -> float:
    """The workers' decode (PIL, reduced JPEG decode, grayscale, 64x64), one process per core."""
    shares = [paths[i::processes] for i in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.map(_decode_share, [share[:8] for share in shares])  # warm-up: imports
        start = time.perf_counter()
        pool.map(_decode_share, shares)
    return len(paths) / (time.perf_counter() - start)


def nvjpeg_rate(paths: list[str], device: torch.device, batch: int = 256) -> float | None:
    """torchvision's decode_jpeg on the device in batches, then grayscale and resize there; None without CUDA."""
    if device.type != "cuda":
        return None
    from torchvision.io import ImageReadMode, decode_jpeg, read_file
    from torchvision.transforms.v2.functional import resize

    files = [read_file(p) for p in paths]  # the files' bytes, read before timing, as a worker's loader would
    decode_jpeg(files[:batch], mode=ImageReadMode.GRAY, device=device)
    _sync(device)
    start = time.perf_counter()
    for i in range(0, len(files), batch):
        images = decode_jpeg(files[i : i + batch], mode=ImageReadMode.GRAY, device=device)
        for image in images:
            resize(image, [64, 64], antialias=True)
    _sync(device)
    return len(files) / (time.perf_counter() - start)


def system_rate(folder: Path, device: str, images: int) -> dict[str, Any]:
    """The real processes on one device: API, control plane, one worker; from POST /jobs to the last row."""
    from bench.fleet import RUNNING
    from cli import services

    work = WORK_DIR / "gpu-system"
    work.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{work / 'gpu.db'}{suffix}").unlink(missing_ok=True)
    url = f"sqlite:///{work / 'gpu.db'}"
    from bench.common import migrate_fresh

    migrate_fresh(url, work / "models")
    with services.private_redis() as broker:
        env = {**os.environ, "DATABASE_URL": url, "BROKER_URL": broker, "MODEL_STORE": str(work / "models"),
               "API_TOKEN": "bench-gpu", "ALLOWED_ROOTS": str(folder), "DEVICE": device}  # fmt: skip
        procs = [services.start_sweeper(env, work / "sweeper.log"),
                 services.start_worker(env, work / "worker.log", "gpu", concurrency=1)]  # fmt: skip
        api, api_url = services.start_api(env, work / "api.log")
        procs.append(api)
        try:
            import httpx

            auth = {"Authorization": "Bearer bench-gpu"}
            with httpx.Client(base_url=api_url, headers=auth, timeout=60) as http:
                warm = http.post("/jobs", json={"folder": str(folder)}).json()["id"]  # loads the model on the device
                while http.get(f"/jobs/{warm}").json()["status"] in RUNNING:
                    time.sleep(0.5)
                job_id = http.post("/jobs", json={"folder": str(folder)}).json()["id"]
                while (job := http.get(f"/jobs/{job_id}").json())["status"] in RUNNING:
                    time.sleep(0.5)
        finally:
            for proc in procs:
                services.stop(proc)
    return {"images": job["counts"]["done"], "images_per_second": job["images_per_second"], "status": job["status"]}


def training_epoch(device: str, limit_per_class: int | None) -> dict[str, Any]:
    """`trainer fit` for one epoch of the reference recipe on one device (bf16 on a GPU), without publishing."""
    runs = WORK_DIR / "gpu-train"
    command = [str(Path(sys.executable).with_name("trainer")), "fit", "--data", str(SHARED_DATA / "catsdogs"),
               "--devices", "1", "--accelerator", "gpu" if device == "cuda" else "cpu", "--max-epochs", "1",
               "--runs-dir", str(runs), "--no-publish", "--seed", "42"]  # fmt: skip
    if limit_per_class:
        command += ["--limit-per-class", str(limit_per_class), "--num-workers", "0"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"trainer fit failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return {"seconds": seconds, "images": 2 * limit_per_class if limit_per_class else 16_000}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the code, measures nothing")
    parser.add_argument("--parts", nargs="+", default=["forward", "decode", "system", "training"])
    parser.add_argument("--json", type=Path, default=WORK_DIR / "gpu.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    quick = args.quick
    images = 64 if quick else 20_000
    results: dict[str, Any] = {"environment": environment(), "device": str(device), "quick": quick}
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
    steps: dict[str, Callable[[], Any]] = {
        "forward": lambda: _forward_table(device, [16] if quick else [256, 1024, 4096], 0.2 if quick else 5.0),
        "decode": lambda: _decode_table(device, _photos(images)),
        "system": lambda: system_rate(_photos(images), args.device, images),
        "training": lambda: training_epoch(args.device, 8 if quick else None),
    }
    for part in args.parts:
        started = time.perf_counter()
        results[part] = steps[part]()
        print(f"{part}: {time.perf_counter() - started:.0f} s", flush=True)
    _print(results)
    write_json(args.json, results)
    return results


def _forward_table(device: torch.device, batches: list[int], seconds: float) -> list[dict[str, Any]]:
    model = load_folder(REFERENCE, device)
    rows = []
    for precision in ("bf16", "fp32"):
        for batch in batches:
            rows.append({"precision": precision, "batch": batch,
                         "images_per_second": forward_rate(model, device, batch, precision, seconds)})  # fmt: skip
    return rows


def _photos(images: int) -> Path:
    """The full-size photos repeated to `images` (hard links), or the first `images` of them when fewer."""
    if images >= 1000:
        return repeated_folder(DATA_SETS["fullres"], images)
    folder = WORK_DIR / f"fullres-first-{images}"
    folder.mkdir(parents=True, exist_ok=True)
    for photo in sorted(iter_image_files(DATA_SETS["fullres"]))[:images]:
        if not (folder / photo.name).exists():
            os.link(photo, folder / photo.name)
    return folder


def _decode_table(device: torch.device, folder: Path) -> dict[str, Any]:
    paths = [str(p) for p in iter_image_files(folder)]
    cores = os.cpu_count() or 1
    return {"images": len(paths), "cpu_processes": cores, "cpu_reduced_decode": cpu_decode_rate(paths, cores),
            "nvjpeg": nvjpeg_rate(paths, device)}  # fmt: skip


def _ceilings(results: dict[str, Any]) -> dict[str, float]:
    """What could bound the system: the network alone at its best, and the workers' decode on every core."""
    found = {}
    if "forward" in results:
        found["forward pass alone"] = max(row["images_per_second"] for row in results["forward"])
    if "decode" in results:
        found["CPU decode on every core"] = results["decode"]["cpu_reduced_decode"]
    return found


def _print(results: dict[str, Any]) -> None:
    print(f"\nenvironment: {results['environment']}; device {results['device']} {results.get('gpu', '')}")
    if "forward" in results:
        print("\nforward pass (images already on the device, channels-last)")
        print_table(results["forward"], [("precision", "precision", ""), ("batch", "batch", ",d"),
                                         ("images_per_second", "images/s", ",.0f")])  # fmt: skip
    if "decode" in results:
        d = results["decode"]
        print(
            f"\ndecode of {d['images']:,} full-size photos: CPU reduced decode ({d['cpu_processes']} processes) "
            f"{d['cpu_reduced_decode']:,.0f} images/s; nvJPEG on the device "
            f"{'not measured (no CUDA)' if d['nvjpeg'] is None else format(d['nvjpeg'], ',.0f') + ' images/s'}"
        )
    if "system" in results:
        s = results["system"]
        print(f"\nsystem end to end: {s['images']:,} images at {s['images_per_second']:,.0f} images/s ({s['status']})")
        for name, ceiling in _ceilings(results).items():
            print(f"  {s['images_per_second'] / ceiling:.2f} of the {name} ({ceiling:,.0f} images/s)")
    if "training" in results:
        t = results["training"]
        print(f"\none training epoch: {t['images']:,} images in {t['seconds']:.0f} s")


if __name__ == "__main__":
    main()
