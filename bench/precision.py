"""Does bfloat16 inference change the results? Accuracy, calibration and confidences in fp32 and bf16.

    python -m bench.precision [--model-dir models/reference] [--json var/bench/precision.json]

Both precisions run the served network (BatchNorm folded, classifier.model.accelerate) on the
workers' decoding of the test split and the full-size photos. bf16 runs on any CPU; it is only
fast where the hardware computes it (AMX, AVX-512 BF16, CUDA), which is where INFERENCE_PRECISION=auto picks it.
"""

from __future__ import annotations

import torch

from bench.common import DATA_SETS, environment, print_table, write_json
from bench.tta import SCORE_COLUMNS, logits_of, model_arguments, scores
from classifier.model import native_bf16

PRECISIONS = ("fp32", "bf16")


def main(argv: list[str] | None = None) -> None:
    args, model = model_arguments(__doc__, "precision.json", argv)
    temperature = float(model.meta.get("temperature", 1.0))
    rows = []
    for name, folder in DATA_SETS.items():
        logits = {p: logits_of(folder, model.serving("eager", 256, p), mirror=False) for p in PRECISIONS}
        labels = logits["fp32"][1]
        probs = {p: torch.softmax(z / temperature, 1) for p, (z, _) in logits.items()}
        for precision in PRECISIONS:
            change = (probs[precision] - probs["fp32"]).abs()[:, 0]
            flipped = (probs[precision].argmax(1) != probs["fp32"].argmax(1)).sum().item()
            rows.append(
                {"data": name, "precision": precision, **scores(logits[precision][0], labels, temperature),
                 "labels_changed": int(flipped), "max_change": change.max().item(),
                 "mean_change": change.mean().item()}
            )  # fmt: skip
    print(f"model {model.version} from {args.model_dir}; bf16 native here: {native_bf16('cpu')}")
    print_table(
        rows,
        [("data", "data", ""), ("precision", "precision", ""), *SCORE_COLUMNS,
         ("labels_changed", "labels changed", "d"), ("max_change", "max |dp|", ".4f"),
         ("mean_change", "mean |dp|", ".5f")],
    )  # fmt: skip
    write_json(args.json, {"environment": environment(), "model": model.version, "rows": rows})


if __name__ == "__main__":
    main()
