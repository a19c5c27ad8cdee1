"""Figures people would rather look at than read: training curves (paper fig. 4) and the confusion matrix (fig. 5)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mineralnet.utils import atomic_path  # noqa: E402


BEST_EPOCH_KEY = "best_epoch"  # PNG text chunk of curves.png: the epoch marked as model.keras, for tools and tests


def save_figure(figure, path, metadata=None):
    """PNG written atomically; `metadata` (str -> str) goes into its text chunks."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120, bbox_inches="tight", format="png", metadata=metadata)
    plt.close(figure)


def curves_figure(history, best_epoch=None):
    """Training and validation accuracy and loss per epoch; `history` is a list of dicts with epoch and metrics.
    `best_epoch`, the epoch saved as model.keras (best validation accuracy), gets a vertical line on both panels:
    the figures the evaluation reports belong to that epoch, not to the last one."""
    epochs = [row["epoch"] for row in history]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("accuracy", "loss")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = [row.get(prefix + metric) for row in history]
            if any(v is not None for v in values):
                axis.plot(epochs, values, style, marker="o", markersize=3, label=("validation " if prefix else "training ") + metric)
        if best_epoch is not None:
            axis.axvline(best_epoch, color="tab:green", linestyle=":", linewidth=1.5,
                         label=f"model.keras (epoch {best_epoch})")
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    return figure


def plot_curves(history, path, best_epoch=None):
    """curves.png (see curves_figure); the marked epoch is also stored in the PNG's `best_epoch` text chunk."""
    metadata = {BEST_EPOCH_KEY: str(best_epoch)} if best_epoch is not None else None
    save_figure(curves_figure(history, best_epoch), path, metadata)


def plot_confusion_matrix(matrix, labels, path):
    """Counts and row-normalised rates (rows = true class), coloured by rate."""
    matrix = np.asarray(matrix)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.6 * len(labels) + 2)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axis, fraction=0.046, label="share of true class")
    axis.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axis.set_yticks(range(len(labels)), labels)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            colour = "white" if rates[i, j] > 0.5 else "black"
            axis.text(j, i, f"{matrix[i, j]}\n{rates[i, j]:.0%}", ha="center", va="center", color=colour, fontsize=8)
    save_figure(figure, path)


def plot_grade_recovery(curves, path):
    """Grade (purity) against recovery, one curve per class as the target bin (mineralnet.metrics.grade_recovery),
    with the report's grade levels as dotted lines. Counted by images, not by mass."""
    figure, axis = plt.subplots(figsize=(6.5, 5))
    for label, curve in curves["per_class"].items():
        if curve["support"] and curve["points"]:
            axis.plot([p["recovery"] for p in curve["points"]], [p["grade"] for p in curve["points"]],
                      marker="o", markersize=2, label=f"{label} (n={curve['support']})")
    for grade in curves["grades"]:
        axis.axhline(grade, color="grey", linestyle=":", linewidth=0.8)
    axis.set_xlim(0, 1.02)
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("recovery (share of the class's images in its bin)")
    axis.set_ylabel("grade (share of the bin's images of that class)")
    axis.set_title("Grade-recovery, each class as the target bin (counted by images)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower left")
    save_figure(figure, path)
