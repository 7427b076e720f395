"""Cost of the stems: GFLOP per 64x64 image and images/s of the forward pass, or of a training step.

    python -m bench.stems [--stems imagenet medium small] [--batch-size 64] [--seconds 5]
                          [--threads N] [--json out.json]
    python -m bench.stems --train [--batch-size 128] ...

Each stem runs as the plain network (contiguous and channels-last) and in each serving
backend of classifier.model.accelerate (BatchNorm folded; TorchInductor), in float32 and in
bfloat16 (fast only where the CPU has AMX or AVX-512 BF16). With --train, a training step
instead (forward, cross-entropy, backward, AdamW), contiguous and channels-last (what `trainer fit
--channels-last` chooses between), in float32 and under bfloat16 autocast (`--precision
bf16-mixed`). Prints one table; the accuracy side of the comparison is in docs/model.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import print_table
from classifier.model import BACKENDS, IMAGE_SIZE, STEMS, accelerate, build_model

# The plain network in two layouts, then each serving backend in float32 and in bfloat16.
FORMS = ("contiguous", "channels_last", *BACKENDS, *(f"{backend} bf16" for backend in BACKENDS))
TRAIN_FORMS = ("contiguous", "channels_last", "contiguous bf16", "channels_last bf16")


def gflop_per_image(stem: str) -> float:
    net = build_model(stem=stem).eval()
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net(torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE))
    return float(counter.get_total_flops()) / 1e9


def images_per_second(stem: str, batch_size: int, seconds: float, form: str) -> float:
    """Median throughput over repeated timed windows of forward passes on random input."""
    net = build_model(stem=stem).eval()
    batch = torch.randn(batch_size, 1, IMAGE_SIZE, IMAGE_SIZE)
    if form == "channels_last":
        net, batch = net.to(memory_format=torch.channels_last), batch.to(memory_format=torch.channels_last)
    elif form != "contiguous":
        backend, _, precision = form.partition(" ")
        net = accelerate(net, backend, batch_size, precision or "fp32")
    rates: list[float] = []
    with torch.inference_mode():
        net(batch)  # warm-up
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(rates) < 3:
            start = time.perf_counter()
            net(batch)
            rates.append(batch_size / (time.perf_counter() - start))
    return sorted(rates)[len(rates) // 2]


def training_images_per_second(stem: str, batch_size: int, seconds: float, form: str) -> float:
    """Median throughput of training steps on random input, in the layout and precision `form`."""
    net = build_model(stem=stem).train()
    batch = torch.randn(batch_size, 1, IMAGE_SIZE, IMAGE_SIZE)
    labels = torch.randint(0, 2, (batch_size,))
    layout, _, precision = form.partition(" ")
    if layout == "channels_last":
        net, batch = net.to(memory_format=torch.channels_last), batch.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad()
        # As Lightning's bf16-mixed: the forward pass and the loss under autocast, float32 weights.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = torch.nn.functional.cross_entropy(net(batch), labels)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()

    step()  # warm-up
    rates: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(rates) < 3:
        start = time.perf_counter()
        step()
        rates.append(batch_size / (time.perf_counter() - start))
    return sorted(rates)[len(rates) // 2]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", action="store_true", help="time training steps, not the forward pass")
    parser.add_argument("--batch-size", type=int, help="(default: 64, or trainer fit's 128 with --train)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--stems", nargs="+", choices=STEMS, default=list(STEMS))
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.batch_size = args.batch_size or (128 if args.train else 64)
    measure = training_images_per_second if args.train else images_per_second
    rows: list[dict[str, Any]] = []
    for stem in args.stems:
        for form in TRAIN_FORMS if args.train else FORMS:
            rate = measure(stem, args.batch_size, args.seconds, form)
            rows.append(
                {
                    "stem": stem,
                    "gflop_per_image": round(gflop_per_image(stem), 3),
                    "form": form,
                    "images_per_second": round(rate, 1),
                }
            )
            print(f"  {stem:<9} {form:<18} {rate:8.1f} img/s", flush=True)
    cpu = platform.processor() or platform.machine()
    what = "training step" if args.train else "forward pass"
    print(f"{what}, batch {args.batch_size}, {args.threads} threads, torch {torch.__version__}, {cpu}")
    print_table(
        rows,
        [("stem", "stem", ""), ("gflop_per_image", "GFLOP/img", ".3f"), ("form", "network", ""),
         ("images_per_second", "img/s", ".1f")],
    )  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"train": args.train, "batch_size": args.batch_size, "threads": args.threads, "rows": rows}, f, indent=2
            )


if __name__ == "__main__":
    main()
