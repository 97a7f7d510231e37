"""The main job's outputs: the printed table, `report.json`, the quality-vs-steps plot and the
sample grid. matplotlib is imported inside the plotting functions only (Agg backend, no display)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np
from torch import Tensor


def format_table(report: dict[str, Any]) -> str:
    """The table `steps | teacher DDIM | distilled | sampling seconds` of a report, with the floor."""
    metric = report["metric"]
    lines = [
        f"Fréchet distance ({metric}; lower is better; data-vs-data floor {report['floor']:.4g})",
        f"{'steps':>6} | {'teacher DDIM':>12} | {'distilled':>10} | {'sampling s':>10}",
        f"{'-' * 6}-+-{'-' * 12}-+-{'-' * 10}-+-{'-' * 10}",
    ]
    for row in report["rows"]:
        student = "-" if row["student"] is None else f"{row['student']:.4g}"
        teacher, seconds = row["teacher_ddim"], row["sample_seconds"]
        lines.append(f"{row['steps']:>6} | {teacher:>12.4g} | {student:>10} | {seconds:>10.3f}")
    return "\n".join(lines)


def write_json(path: str, obj: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def plot_quality(report: dict[str, Any], path: str) -> None:
    """Quality against steps on a log2 axis: the teacher's DDIM line, the distilled students, and
    the data-vs-data floor (one panel per feature space in the report)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = report.get("space", report["spaces"][0])
    spaces = [main] + [s for s in report["spaces"] if s != main]
    fig, axes = plt.subplots(1, len(spaces), figsize=(5.5 * len(spaces), 4), squeeze=False)
    for ax, space in zip(axes[0], spaces, strict=True):
        rows = report["rows"]
        key_t, key_s, floor = f"teacher_ddim_{space}", f"student_{space}", report["floors"][space]
        steps = [r["steps"] for r in rows]
        ax.plot(steps, [r[key_t] for r in rows], "o-", label="teacher, DDIM")
        srows = [r for r in rows if r.get(key_s) is not None]
        if srows:
            ax.plot([r["steps"] for r in srows], [r[key_s] for r in srows], "s-", label="distilled student")
        ax.axhline(floor, color="gray", ls="--", label="data vs data (floor)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sampling steps")
        ax.set_ylabel(f"Fréchet distance ({space})")
        ax.set_title(f"{report.get('data', '')}: quality vs steps ({space})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_samples(
    samples: dict[str, dict[int, Tensor]], path: str, per_row: int = 12, data: Tensor | None = None
) -> bool:
    """A grid of samples per step count: one row per (model, steps), e.g. `samples["teacher"][8]`.

    Images (n, C, H, W) with C in {1, 3} are tiled; 2-D points (n, 2) are scattered, one panel per
    row. Returns False (writing nothing) for other shapes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(name, n, s) for name in samples for n, s in sorted(samples[name].items())]
    if data is not None:
        rows = [("data", 0, data)] + rows
    if not rows:
        return False
    first = rows[0][2]
    label = [
        f"{name}" if name == "data" else f"{name}, {n} step{'s' if n > 1 else ''}" for name, n, _ in rows
    ]
    if first.ndim == 4 and first.shape[1] in (1, 3):
        tiles = []
        for _, _, s in rows:
            s = s[:per_row].detach().cpu().float().clamp(-1, 1).numpy()
            s = (s + 1) / 2
            pad = np.zeros((per_row - s.shape[0],) + s.shape[1:]) if s.shape[0] < per_row else None
            s = s if pad is None else np.concatenate([s, pad])
            c, h, w = s.shape[1:]
            row = np.full((c, h + 2, per_row * (w + 2)), 0.2)
            for j in range(per_row):
                row[:, 1 : 1 + h, j * (w + 2) + 1 : j * (w + 2) + 1 + w] = s[j]
            tiles.append(row)
        fig, axes = plt.subplots(
            len(rows), 1, figsize=(per_row * 0.6 + 2, 0.75 * len(rows) + 0.5), squeeze=False
        )
        for ax, tile, name in zip(axes[:, 0], tiles, label, strict=True):
            img = tile[0] if tile.shape[0] == 1 else tile.transpose(1, 2, 0)
            ax.imshow(
                img, cmap="gray_r" if tile.shape[0] == 1 else None, vmin=0, vmax=1, interpolation="nearest"
            )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    elif first.ndim == 2 and first.shape[1] == 2:
        cols = min(4, len(rows))
        nr = math.ceil(len(rows) / cols)
        fig, axes = plt.subplots(nr, cols, figsize=(3 * cols, 3 * nr), squeeze=False)
        for ax in axes.flat:
            ax.set_visible(False)
        for ax, (_, _, s), name in zip(axes.flat, rows, label, strict=False):
            ax.set_visible(True)
            p = s.detach().cpu().float().numpy()
            ax.scatter(p[:, 0], p[:, 1], s=2, alpha=0.5)
            ax.set_xlim(-1.05, 1.05)
            ax.set_ylim(-1.05, 1.05)
            ax.set_aspect("equal")
            ax.set_title(name, fontsize=9)
    else:
        return False
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
