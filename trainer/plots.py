"""Pictures of an evaluation report: confusion matrix, reliability diagram, confident mistakes, learning curves.

Figures are built with matplotlib's object API on the Agg canvas, never through
pyplot, so nothing needs a display and no global figure state is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from classifier.preprocess import ImageDecodeError, load_image

REPORT_FIGURES = ("confusion_matrix", "reliability", "mistakes")


class FigureWriter(Protocol):
    """What `log_figure` needs: torch's SummaryWriter, i.e. a TensorBoardLogger's `experiment`."""

    def add_figure(self, tag: str, figure: Figure, global_step: int | None = None, close: bool = True) -> None: ...


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def confusion_matrix_figure(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> Figure:
    """Draw the (C, C) count matrix, rows = true class, columns = predicted; cells show count and row share."""
    counts = np.asarray(matrix, dtype=np.int64)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = _figure(4.2, 3.6)
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of true class")
    for (i, j), count in np.ndenumerate(counts):
        color = "white" if shares[i, j] > 0.5 else "black"
        ax.text(j, i, f"{count}\n{shares[i, j]:.1%}", ha="center", va="center", color=color)
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix ({int(counts.sum())} images)")
    return fig


def reliability_diagram_figure(
    bins: Sequence[dict[str, float]], ece: float, temperature: float | None = None
) -> Figure:
    """Draw accuracy against mean confidence per bin, the gap to the diagonal shaded, and ECE in the title."""
    fig = _figure(4.8, 4.4)
    ax = fig.add_subplot()
    lower = np.array([b["lower"] for b in bins])
    width = np.array([b["upper"] - b["lower"] for b in bins])
    used = np.array([b["count"] > 0 for b in bins])
    accuracy = np.array([b["accuracy"] for b in bins])
    confidence = np.array([b["confidence"] for b in bins])
    ax.bar(lower[used], accuracy[used], width[used], align="edge", color="tab:blue", edgecolor="black",
           label="accuracy")  # fmt: skip
    ax.bar(lower[used], (confidence - accuracy)[used], width[used], bottom=accuracy[used], align="edge",
           color="tab:red", alpha=0.3, edgecolor="tab:red", hatch="//", label="gap to confidence")  # fmt: skip
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    for left, w, count in zip(lower[used], width[used], np.array([b["count"] for b in bins])[used], strict=True):
        ax.text(left + w / 2, 0.01, str(count), ha="center", fontsize=6, rotation=90)  # images in the bin
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-1)")
    ax.set_ylabel("accuracy")
    suffix = f", T = {temperature:.3f}" if temperature is not None else ""
    ax.set_title(f"reliability: ECE {ece:.4f}{suffix}")
    ax.legend(loc="upper left", fontsize=8)
    return fig


def mistakes_grid_figure(mistakes: Sequence[dict[str, Any]], columns: int = 4) -> Figure:
    """Show each mistake's 64x64 grayscale input (as `load_image` feeds the network), file name, labels, confidence.

    `mistakes` are `evaluate.confident_mistakes` rows: path, true, predicted, confidence.
    """
    columns = max(1, min(columns, len(mistakes)))
    rows = max(1, -(-len(mistakes) // columns))
    fig = _figure(2.2 * columns, 2.5 * rows)
    if not mistakes:
        fig.text(0.5, 0.5, "no mistakes", ha="center", va="center")
        return fig
    for i, mistake in enumerate(mistakes):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.imshow(_network_input(mistake["path"]), cmap="gray", vmin=0, vmax=255)
        ax.set_title(
            f"{Path(mistake['path']).name}\ntrue {mistake['true']}, pred {mistake['predicted']} "
            f"{mistake['confidence']:.2f}",
            fontsize=7,
        )
        ax.axis("off")
    fig.suptitle(f"{len(mistakes)} most confident mistakes")
    return fig


def _network_input(path: str) -> np.ndarray:
    try:
        return load_image(path)
    except ImageDecodeError:  # the file changed since it was scored; show a blank tile, not a failed report
        return np.zeros((64, 64), dtype=np.uint8)


def learning_curves_figure(history: Sequence[dict[str, float]]) -> Figure:
    """Plot per-epoch train/val loss, val accuracy and val_pred_dog_share (a collapse to one class shows as 0 or 1)."""
    fig = _figure(12, 3.6)
    panels = (
        ("loss", ("train_loss_epoch", "val_loss")),
        ("accuracy", ("train_acc", "val_acc")),
        ("share of 'dog' predictions", ("val_pred_dog_share",)),
    )
    for i, (title, keys) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for key in keys:
            points = [(row["epoch"], row[key]) for row in history if key in row]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=key)
        if title.startswith("share"):
            ax.axhline(0.5, color="gray", linestyle=":", linewidth=1)
            ax.set_ylim(0, 1)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return fig


def report_figures(report: dict[str, Any], history: Sequence[dict[str, float]] | None = None) -> dict[str, Figure]:
    """Return the pictures of an `evaluate.report` (with `mistakes`), plus learning curves when `history` is given."""
    figures = {
        "confusion_matrix": confusion_matrix_figure(report["confusion_matrix"], report["classes"]),
        "reliability": reliability_diagram_figure(report["reliability"], report["ece"], report["temperature"]),
        "mistakes": mistakes_grid_figure(report.get("mistakes", [])),
    }
    if history is not None:
        figures["learning_curves"] = learning_curves_figure(history)
    return figures


def save_png(fig: Figure, path: Path, dpi: int = 120) -> Path:
    """Write `fig` to `path` as PNG and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
    return path


def log_figure(writer: FigureWriter, tag: str, fig: Figure, step: int = 0) -> None:
    """Add `fig` to TensorBoard as image `tag` at `step`."""
    writer.add_figure(tag, fig, global_step=step, close=False)  # not pyplot-managed: nothing to close


def save_figures(
    figures: dict[str, Figure], out_dir: Path, writer: FigureWriter | None = None, step: int = 0
) -> list[Path]:
    """Save each figure as out_dir/NAME.png, log it as `report/NAME` when a writer is given; return the files."""
    paths = []
    for name, fig in figures.items():
        paths.append(save_png(fig, out_dir / f"{name}.png"))
        if writer is not None:
            log_figure(writer, f"report/{name}", fig, step)
    return paths
