"""The jobs' outputs: the printed tables, `samples.npz`, the quality-vs-steps plot and the
sample grids (`report.json` is written with `pd_fast.app.checkpoint.save_json`). matplotlib is
imported inside the plotting functions only (Agg backend, no display)."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from torch import Tensor

from .evaluation.targets import EVAL_STEPS, TEACHER_STEPS, find_row


def _with_interval(value: float | None, interval: list[float] | None) -> str:
    if value is None:
        return "-"
    if interval is None:
        return f"{value:.4g}"
    return f"{value:.4g} [{interval[0]:.4g}, {interval[1]:.4g}]"


def format_table(report: dict[str, Any]) -> str:
    """The table `steps | teacher DDIM | distilled | sampling seconds` of a report, with the floor;
    each distance with its interval where the report has `intervals`."""
    metric = report["metric"]
    intervals = report.get("intervals")
    by_steps = {r["steps"]: r for r in intervals["rows"]} if intervals else {}
    floor = _with_interval(report["floor"], intervals["floor"] if intervals else None)
    cells = []
    for row in report["rows"]:
        ci = by_steps.get(row["steps"], {})
        cells.append(
            (
                _with_interval(row["teacher_ddim"], ci.get("teacher_ddim")),
                _with_interval(row["student"], ci.get("student")),
            )
        )
    wt = max([12] + [len(t) for t, _ in cells])
    ws = max([10] + [len(s) for _, s in cells])
    lines = [f"Fréchet distance ({metric}; lower is better; data-vs-data floor {floor})"]
    if intervals:
        lines.append(
            f"[low, high]: {intervals['level']:.0%} interval over the {report['eval_samples']} samples "
            f"(paired bootstrap, {intervals['resamples']} resamplings)"
        )
    lines += [
        f"{'steps':>6} | {'teacher DDIM':>{wt}} | {'distilled':>{ws}} | {'sampling s':>10}",
        f"{'-' * 6}-+-{'-' * wt}-+-{'-' * ws}-+-{'-' * 10}",
    ]
    for row, (teacher, student) in zip(report["rows"], cells, strict=True):
        lines.append(
            f"{row['steps']:>6} | {teacher:>{wt}} | {student:>{ws}} | {row['sample_seconds']:>10.3f}"
        )
    return "\n".join(lines)


def _ratio_cell(c: dict | None) -> str:
    if c is None:
        return "-"
    lo, hi = c["interval"]
    high = "inf" if hi is None else f"{hi:.3f}"
    return f"{c['ratio']:.3f} [{lo:.3f}, {high}]{' *' if c['significant'] else '  '}"


def _list_steps(items: list[int]) -> str:
    return ", ".join(str(n) for n in items) if items else "none"


def format_comparisons(report: dict[str, Any], space: str | None = None) -> str:
    """The ratios of a report's `comparisons` in one space (default: the main metric's) as a
    table, and which differences are significant, in words."""
    comp = report["comparisons"]
    space = space or report["space"]
    ref = comp["reference_steps"]
    by = {(c["name"], c["space"]): c for c in comp["rows"]}
    rows = report["rows"]

    def get(a: str, n: int, b: str, m: int) -> dict | None:
        return by.get((f"{a}_{n}_vs_{b}_{m}", space))

    heads = (f"teacher(N)/teacher({ref})", f"distilled/teacher({ref})", "distilled/teacher(N)")
    cells = [
        (
            _ratio_cell(get("teacher_ddim", r["steps"], "teacher_ddim", ref)),
            _ratio_cell(get("student", r["steps"], "teacher_ddim", ref)),
            _ratio_cell(get("student", r["steps"], "teacher_ddim", r["steps"])),
        )
        for r in rows
    ]
    w = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    lines = [
        f"Ratios of Fréchet distances ({space}; paired, same noise; {comp['level']:.0%} interval; "
        "* = significant: the interval excludes 1)",
        f"{'steps':>6} | " + " | ".join(f"{h:>{w[i]}}" for i, h in enumerate(heads)),
        f"{'-' * 6}-+-" + "-+-".join("-" * x for x in w),
    ]
    for r, c in zip(rows, cells, strict=True):
        lines.append(f"{r['steps']:>6} | " + " | ".join(f"{c[i]:>{w[i]}}" for i in range(3)))
    for b, m_of, label in (
        ("teacher_ddim", lambda n: n, "distilled vs teacher DDIM at the same N"),
        ("teacher_ddim", lambda n: ref, f"distilled vs teacher {ref}-step DDIM"),
    ):
        found = [(r["steps"], get("student", r["steps"], b, m_of(r["steps"]))) for r in rows]
        found = [(n, c) for n, c in found if c is not None]
        if not found:
            continue
        better = [n for n, c in found if c["significant"] and c["ratio"] < 1]
        worse = [n for n, c in found if c["significant"] and c["ratio"] > 1]
        same = [n for n, c in found if not c["significant"]]
        lines.append(
            f"{label}: significantly better at N = {_list_steps(better)}; significantly worse at "
            f"N = {_list_steps(worse)}; no significant difference at N = {_list_steps(same)}."
        )
    return "\n".join(lines)


def format_quality_checks(report: dict[str, Any]) -> str:
    """Precision/recall and the memorisation check of a report, as one table."""
    pr, memo = report["precision_recall"], report.get("memorisation")
    lines = [f"k-NN precision / recall (k = {pr['k']}, {pr['space']} features; higher is better)"]
    if pr["data"] is not None:
        lines[0] += f"; data vs data: {pr['data']['precision']:.3f} / {pr['data']['recall']:.3f}"
    if memo is not None:
        lines.append(
            f"memorisation ({memo['space']}): median nearest-training-example distance / held-out's "
            f"({memo['held_out_median']:.3g}, leave-one-out over {memo['training_examples']} examples), "
            "and the fraction of samples closer than held-out's 1st percentile (about 0.01 if nothing "
            "is copied)"
        )
    memo_by = {r["steps"]: r for r in memo["rows"]} if memo else {}

    def cell(field: str, row: dict) -> tuple[str, str]:
        p = row.get(field)
        m = memo_by.get(row["steps"], {}).get(field)
        a = "-" if p is None else f"{p['precision']:.3f} / {p['recall']:.3f}"
        b = (
            "-"
            if m is None or m["median_ratio"] is None
            else f"{m['median_ratio']:.3f}, {m['below_held_out_p01']:.3f}"
        )
        return a, b

    heads = ("teacher P / R", "distilled P / R", "teacher memo", "distilled memo")
    cells = []
    for row in pr["rows"]:
        (tp, tm), (sp, sm) = cell("teacher_ddim", row), cell("student", row)
        cells.append((tp, sp, tm, sm))
    w = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    lines += [
        f"{'steps':>6} | " + " | ".join(f"{h:>{w[i]}}" for i, h in enumerate(heads)),
        f"{'-' * 6}-+-" + "-+-".join("-" * x for x in w),
    ]
    for row, c in zip(pr["rows"], cells, strict=True):
        lines.append(f"{row['steps']:>6} | " + " | ".join(f"{c[i]:>{w[i]}}" for i in range(4)))
    return "\n".join(lines)


#: the `.npz` name prefix of each model's samples
SAMPLE_NAMES = {
    "teacher": "x_teacher_ddim_N",
    "student": "x_student_ddim_N",
    "teacher_dpmpp": "x_teacher_dpmpp_N",
    "teacher_unipc": "x_teacher_unipc_N",
}


def format_baselines(report: dict[str, Any]) -> str:
    """The baselines of a report (`baselines`): per N, the teacher with DDIM, DPM-Solver++(2M) and
    UniPC, and the student, each Fréchet distance with its interval, then the student's ratio to
    each solver at its N (`*`: significant; `overlap`: the two distances' intervals overlap)."""
    base = report.get("baselines")
    if not base:
        return ""
    metric = report["space"]
    ddim = {r["steps"]: r for r in report["rows"]}
    ddim_ci = {r["steps"]: r for r in report.get("intervals", {}).get("rows", [])}
    ci = {r["steps"]: r for r in base["intervals"]["rows"]}
    ratios = {(c["name"], c["steps"]): c for c in base["comparisons"]["rows"] if c["space"] == metric}
    lines = [f"Baselines: the teacher with training-free solvers ({metric} Fréchet distance, 95% intervals)"]
    lines += [f"  {k}: {v}" for k, v in base["solvers"].items()]
    heads = ("DDIM", "DPM-Solver++ 2M", "UniPC", "distilled", "distilled / 2M", "distilled / UniPC")
    cells = []
    for row in base["rows"]:
        n = row["steps"]
        d = ddim.get(n, {})
        c = []
        c.append(_with_interval(d.get("teacher_ddim"), ddim_ci.get(n, {}).get("teacher_ddim")))
        for name in ("teacher_dpmpp", "teacher_unipc"):
            c.append(_with_interval(row.get(name), ci.get(n, {}).get(name)))
        c.append(_with_interval(d.get("student"), ddim_ci.get(n, {}).get("student")))
        for name in ("teacher_dpmpp", "teacher_unipc"):
            r = ratios.get((f"student_{n}_vs_{name}_{n}", n))
            c.append(_ratio_cell(r) + (" overlap" if r and r.get("frechet_intervals_overlap") else ""))
        cells.append(c)
    w = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    lines += [
        f"{'steps':>6} | " + " | ".join(f"{h:>{w[i]}}" for i, h in enumerate(heads)),
        f"{'-' * 6}-+-" + "-+-".join("-" * x for x in w),
    ]
    for row, c in zip(base["rows"], cells, strict=True):
        lines.append(f"{row['steps']:>6} | " + " | ".join(f"{c[i]:>{w[i]}}" for i in range(len(heads))))
    return "\n".join(lines)


def write_samples(path: str, samples: dict[str, dict[int, Tensor]]) -> None:
    """Write the scored samples to an `.npz` atomically: `x_teacher_ddim_N<N>`,
    `x_student_ddim_N<N>` and, where given, the baselines' `x_teacher_dpmpp_N<N>` and
    `x_teacher_unipc_N<N>`, float32 (n, ...) in [-1, 1], as `evaluate_models` and
    `evaluate_baselines` returned them."""
    from .checkpoint import atomic_write_bytes

    arrays = {
        f"{prefix}{n}": s.detach().cpu().float().numpy()
        for key, prefix in SAMPLE_NAMES.items()
        for n, s in sorted(samples.get(key, {}).items())
    }
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def plot_quality(report: dict[str, Any], path: str) -> None:
    """Quality against steps on a log2 axis: the teacher's DDIM line, the distilled students, and
    the data-vs-data floor (one panel per feature space in the report). Where the report has
    `intervals` and `comparisons`: error bars, a shaded floor band, and a last panel with the
    paired ratios to the teacher at the most steps (the comparison the bars of the other panels,
    which ignore the pairing, understate)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = report.get("space", report["spaces"][0])
    spaces = [main] + [s for s in report["spaces"] if s != main]
    intervals, comparisons = report.get("intervals"), report.get("comparisons")
    ci_by = {r["steps"]: r for r in intervals["rows"]} if intervals else {}
    panels = len(spaces) + (1 if comparisons else 0)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    rows = report["rows"]
    for ax, space in zip(axes[0], spaces, strict=False):
        key_t, key_s, floor = f"teacher_ddim_{space}", f"student_{space}", report["floors"][space]
        # students drawn a little to the right, so that the two sets of bars do not overlap
        for key, fmt, label, dx in (
            (key_t, "o-", "teacher, DDIM", 1.0),
            (key_s, "s-", "distilled student", 2**0.1),
        ):
            have = [r for r in rows if r.get(key) is not None]
            if not have:
                continue
            x, y = [r["steps"] * dx for r in have], [r[key] for r in have]
            cis = [ci_by.get(r["steps"], {}).get(key) for r in have]
            if intervals and all(c is not None for c in cis):
                err = np.array([[v - c[0], c[1] - v] for v, c in zip(y, cis, strict=True)]).T
                ax.errorbar(x, y, yerr=err, fmt=fmt, capsize=3, label=label)
            else:
                ax.plot(x, y, fmt, label=label)
        ax.axhline(floor, color="gray", ls="--", label="data vs data (floor)")
        if intervals:
            lo, hi = intervals["floors"][space]
            ax.axhspan(max(lo, 1e-12), hi, color="gray", alpha=0.12, lw=0, label="floor's interval")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sampling steps")
        ax.set_ylabel(f"Fréchet distance ({space})")
        title = f"{report.get('data', '')}: quality vs steps ({space})"
        if intervals:
            title += (
                f"\nbars: {intervals['level']:.0%} intervals over {report.get('eval_samples', '')} samples"
            )
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if comparisons:
        _plot_ratios(axes[0][-1], report, main)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_ratios(ax: Any, report: dict[str, Any], space: str) -> None:
    """Each model's Fréchet distance over the teacher's at the most steps, with the paired
    intervals; points above the axis are drawn as arrows at its top, with their value."""
    comp = report["comparisons"]
    ref = comp["reference_steps"]
    by = {c["name"]: c for c in comp["rows"] if c["space"] == space}
    lines = []
    for field, fmt, label, dx in (
        ("teacher_ddim", "o-", "teacher, DDIM", 1.0),
        ("student", "s-", "distilled student", 2**0.1),
    ):
        have = [(r["steps"], by.get(f"{field}_{r['steps']}_vs_teacher_ddim_{ref}")) for r in report["rows"]]
        lines.append((fmt, label, dx, [(n, c) for n, c in have if c is not None]))
    student_highs = [c["interval"][1] or c["ratio"] for _, c in lines[1][3]]
    top = min(5.0, max([1.5] + [1.05 * h for h in student_highs]))
    bottom = min([0.95] + [c["interval"][0] - 0.02 for _, _, _, pts in lines for _, c in pts])
    for fmt, label, dx, pts in lines:
        if not pts:
            continue
        x = np.array([n * dx for n, _ in pts], dtype=float)
        y = np.array([c["ratio"] for _, c in pts])
        lo = np.array([c["interval"][0] for _, c in pts])
        hi = np.array([top * 2 if c["interval"][1] is None else c["interval"][1] for _, c in pts])
        shown = y <= top
        color = ax.plot(x[shown], y[shown], fmt, label=label)[0].get_color()
        ax.errorbar(
            x[shown],
            y[shown],
            yerr=[y[shown] - lo[shown], hi[shown] - y[shown]],
            fmt="none",
            ecolor=color,
            capsize=3,
        )
        for xi, yi in zip(x[~shown], y[~shown], strict=True):
            ax.plot([xi], [top], "^", color=color)
            ax.annotate(
                f"{yi:.3g}",
                (xi, top),
                textcoords="offset points",
                xytext=(0, -12),
                ha="center",
                fontsize=7,
                color=color,
            )
    ax.axhline(1.0, color="gray", ls="--", label=f"teacher, {ref}-step DDIM")
    ax.set_xscale("log", base=2)
    ax.set_ylim(bottom, top)
    ax.set_xlabel("sampling steps")
    ax.set_ylabel(f"Fréchet distance / teacher's at {ref} steps")
    ax.set_title(
        f"ratio to the teacher's {ref}-step DDIM ({space})\nbars: paired {comp['level']:.0%} intervals "
        "(same noise)",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


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


# ----- the guided job ----------------------------------------------------------------------------


def format_guided_table(report: dict[str, Any]) -> str:
    """One line per (model, sampler, N), one column group (FD, accuracy, precision / recall) per w."""
    rows, ws = report["rows"], report["ws"]
    keys = sorted({(r["model"], r["sampler"], r["steps"]) for r in rows}, key=lambda k: (k[0], k[1], -k[2]))
    head = f"{'model':<22}" + "".join(f" | w={w:<4} FD     acc    P / R    " for w in ws)
    data = report.get("precision_recall_data")
    title = f"{report['metric']} (floor {report['floor']:.4g}), class accuracy, k-NN precision / recall"
    if data:
        title += f" (k = {data['k']}; data vs data {data['precision']:.2f} / {data['recall']:.2f})"
    lines = [title, head, "-" * len(head)]
    for model, sampler, steps in keys:
        cells = []
        for w in ws:
            r = find_row(rows, model, sampler, steps, w)
            pr = "-" if r is None or r.get("recall") is None else f"{r['precision']:.2f}/{r['recall']:.2f}"
            cells.append(f" | {r['frechet']:9.4g} {r['accuracy']:6.3f} {pr:>9} " if r else " | " + " " * 27)
        lines.append(f"{f'{model} {sampler} N={steps}':<22}" + "".join(cells))
    return "\n".join(lines)


def format_guided_memorisation(report: dict[str, Any]) -> str | None:
    """The memorisation check of every row, one line per (model, sampler, N), a column per w; None
    when the report has none."""
    ref, rows, ws = report.get("memorisation"), report["rows"], report["ws"]
    if ref is None:
        return None
    keys = sorted({(r["model"], r["sampler"], r["steps"]) for r in rows}, key=lambda k: (k[0], k[1], -k[2]))
    lines = [
        f"memorisation ({ref['space']}): median nearest-training-example distance / held-out's "
        f"({ref['held_out_median']:.3g}, leave-one-out over {ref['training_examples']} examples), and the "
        "fraction of samples closer than held-out's 1st percentile (about 0.01 if nothing is copied)",
        f"{'model':<22}" + "".join(f" | w={w:<10}" for w in ws),
    ]
    lines.append("-" * len(lines[1]))
    for model, sampler, steps in keys:
        cells = []
        for w in ws:
            m = (find_row(rows, model, sampler, steps, w) or {}).get("memorisation")
            ok = m is not None and m["median_ratio"] is not None
            cells.append(
                f" | {m['median_ratio']:.3f}, {m['below_held_out_p01']:.3f}" if ok else " | -" + " " * 11
            )
        lines.append(f"{f'{model} {sampler} N={steps}':<22}" + "".join(cells))
    return "\n".join(lines)


def write_guided_samples(path: str, samples: dict[str, tuple[Tensor, Tensor]]) -> None:
    """The scored samples as `x_<key>` (float32 (n, ...) in [-1, 1]) and their labels `y_<key>`
    (int64 (n,)), written atomically."""
    from .checkpoint import atomic_write_bytes

    arrays = {}
    for key, (x, y) in samples.items():
        arrays[f"x_{key}"] = x.numpy().astype(np.float32)
        arrays[f"y_{key}"] = y.numpy().astype(np.int64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def plot_grid(samples: dict[str, tuple[Tensor, Tensor]], w: str, classes: int, path: str) -> bool:
    """A grid for one w: rows are classes, columns the student (DDIM) at each N, then the teacher's
    256-step DDIM; each cell the first sample of that class. False (nothing written) for non-images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [(f"student N={n}", f"student_ddim_N{n}_w{w}") for n in EVAL_STEPS]
    cols.append((f"teacher N={TEACHER_STEPS}", f"teacher_ddim_N{TEACHER_STEPS}_w{w}"))
    cols = [(title, key) for title, key in cols if key in samples]
    if not cols or samples[cols[0][1]][0].ndim != 4 or samples[cols[0][1]][0].shape[1] not in (1, 3):
        return False
    fig, axes = plt.subplots(
        classes, len(cols), figsize=(1.1 * len(cols) + 0.6, 1.0 * classes), squeeze=False
    )
    for j, (title, key) in enumerate(cols):
        x, y = samples[key]
        for c in range(classes):
            ax = axes[c, j]
            ax.set_xticks([])
            ax.set_yticks([])
            hit = (y == c).nonzero()
            if len(hit):
                img = ((x[int(hit[0, 0])].clamp(-1, 1) + 1) / 2).numpy()
                ax.imshow(
                    img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0), cmap="gray_r", vmin=0, vmax=1
                )
            if c == 0:
                ax.set_title(title, fontsize=7)
            if j == 0:
                ax.set_ylabel(str(c), rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"w = {w}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ----- the text-to-image job -------------------------------------------------------------------


def format_latent_table(report: dict[str, Any]) -> str:
    """One line per (model, N), a column group (distance with its interval, UNet calls per image)
    per w: the text-to-image job's rows (`pd_fast.app.evaluation.latent`)."""
    rows, ws = report["rows"], report["ws"]
    accuracy = any("accuracy" in r for r in rows)
    acc_head = "  acc" if accuracy else ""
    head = f"{'model':<14}" + "".join(f" | w={w!s:<6} distance [95%]        calls{acc_head}" for w in ws)
    lines = [
        "RMS latent distance to the teacher's 256-step guided DDIM sample (same noise and prompt)"
        + (
            ", and the accuracy of the digit the prompt names (decoded samples, digits classifier)"
            if accuracy
            else ""
        ),
        head,
    ]
    lines.append("-" * len(head))
    for model, steps in sorted({(r["model"], r["steps"]) for r in rows}, key=lambda k: (k[0], k[1])):
        cells = []
        for w in ws:
            r = next((r for r in rows if (r["model"], r["steps"], r["w"]) == (model, steps, w)), None)
            if r is None:
                cells.append(" | " + " " * (35 + len(acc_head)))
                continue
            lo, hi = r["interval"]
            cells.append(
                f" | {r['distance']:8.4g} [{lo:.4g}, {hi:.4g}]".ljust(30)
                + f"{r['unet_calls_per_image']:6.0f}"
                + (f"{r['accuracy']:5.2f}" if accuracy else "")
            )
        lines.append(f"{f'{model} N={steps}':<14}" + "".join(cells))
    return "\n".join(lines)


def plot_prompt_grid(columns: list[tuple[str, Tensor]], prompts: list[str], title: str, path: str) -> bool:
    """A grid of decoded images: one row per prompt, one column per (title, images (n, C, H, W) in
    about [-1, 1]). False (nothing written) without images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not columns:
        return False
    n = min(len(prompts), min(x.shape[0] for _, x in columns))
    fig, axes = plt.subplots(
        n, len(columns), figsize=(1.3 * len(columns) + 2.5, 1.2 * n + 0.4), squeeze=False
    )
    for j, (name, x) in enumerate(columns):
        for i in range(n):
            ax = axes[i, j]
            img = ((x[i].clamp(-1, 1) + 1) / 2).numpy()
            ax.imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=7)
            if j == 0:
                ax.set_ylabel(prompts[i][:28], rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
