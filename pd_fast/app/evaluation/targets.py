"""The quality targets a report checks, each with its verdict and a line of text.

main_targets(rows, comparisons, space, precision_recall) -> [...]   the built-in and diffusers jobs
guided_targets(rows, replicates) -> [...]                           the guided job ([GD])
"""

from __future__ import annotations

import numpy as np

# The guided job's evaluation: the teacher's reference (DDIM at 256 steps) and the students' N.
TEACHER_STEPS = 256
EVAL_STEPS = (1, 2, 4, 8)


def main_targets(
    rows: list[dict],
    comparisons: dict | None = None,
    space: str | None = None,
    precision_recall: dict | None = None,
) -> list[dict]:
    """The quality targets, where the rows allow them: student(8) <= 1.05 x teacher(256) with the
    upper end of the ratio's 95% interval <= 1.10, student(4) <= 1.15 x teacher(256) (its interval
    against the same 1.15), the same in pixel space with 0.05 more (when the main metric is
    another space), student(1) < teacher(4); each with the interval of its ratio in its space
    where `comparisons` (of `sample_statistics`) holds it; and the 1-step student's k-NN recall at
    least 0.9 x the teacher's at 256 steps, where `precision_recall` holds both."""
    by = {r["steps"]: r for r in rows}
    compared = {(c["space"], c["name"]): c for c in (comparisons or {}).get("rows", [])}
    out = []
    spaces = [("", space, 0.0)] + ([("_pixel", "pixel", 0.05)] if space not in (None, "pixel") else [])
    for suffix, name, slack in spaces:
        ref = by.get(256, {}).get("teacher_ddim" + suffix)
        for n, factor, interval_limit in ((8, 1.05, 1.10), (4, 1.15, 1.15)):
            s = by.get(n, {}).get("student" + suffix)
            if s is None or ref is None:
                continue
            ratio = s / ref
            factor, interval_limit = round(factor + slack, 6), round(interval_limit + slack, 6)
            where = " in pixel space" if suffix else ""
            out.append(
                dict(
                    name=f"student_{n}_vs_teacher_256{suffix}",
                    ratio=ratio,
                    limit=factor,
                    met=ratio <= factor,
                    text=f"target: {n}-step student / teacher 256-step DDIM{where} = {ratio:.3f} "
                    f"(<= {factor}: {'met' if ratio <= factor else 'MISSED'})",
                )
            )
            _add_interval(out[-1], compared.get((name, f"student_{n}_vs_teacher_ddim_256")), interval_limit)
    s1, t4 = by.get(1, {}).get("student"), by.get(4, {}).get("teacher_ddim")
    if s1 is not None and t4 is not None:
        out.append(
            dict(
                name="student_1_vs_teacher_4",
                ratio=s1 / t4,
                limit=1.0,
                met=s1 < t4,
                text=f"target: 1-step student {s1:.4g} < teacher 4-step DDIM {t4:.4g}: "
                f"{'met' if s1 < t4 else 'MISSED'}",
            )
        )
        _add_interval(out[-1], compared.get((space, "student_1_vs_teacher_ddim_4")), 1.0)
    pr = {r["steps"]: r for r in (precision_recall or {}).get("rows", [])}
    r1, r256 = pr.get(1, {}).get("student"), pr.get(256, {}).get("teacher_ddim")
    if r1 is not None and r256 is not None and r256["recall"] > 0:
        ratio = r1["recall"] / r256["recall"]
        out.append(
            dict(
                name="student_1_recall_vs_teacher_256",
                ratio=ratio,
                limit=0.9,
                met=ratio >= 0.9,
                text=f"target: 1-step student's recall {r1['recall']:.3f} = {ratio:.3f} x the teacher's "
                f"256-step {r256['recall']:.3f} (>= 0.9: {'met' if ratio >= 0.9 else 'MISSED'})",
            )
        )
    return out


def _add_interval(target: dict, comparison: dict | None, limit: float) -> None:
    """Add a comparison's interval to a target: `interval`, `interval_limit` and `met_by_interval`
    (the whole interval within `limit`: below it for a strict target)."""
    if comparison is None:
        return
    lo, hi = comparison["interval"]
    strict = target["name"] == "student_1_vs_teacher_4"
    met = hi is not None and (hi < limit if strict else hi <= limit)
    target.update(interval=[lo, hi], interval_limit=limit, met_by_interval=met)
    target["interval_text"] = (
        f"ratio {target['ratio']:.3f}, 95% interval [{lo:.3f}, {'inf' if hi is None else f'{hi:.3f}'}]: "
        f"{'all' if met else 'not all'} {'<' if strict else '<='} {limit}"
    )


def sample_key(row: dict) -> str:
    """The key of a guided row's samples: `<model>_<sampler>_N<N>_w<w>`."""
    return f"{row['model']}_{row['sampler']}_N{row['steps']}_w{row['w']}"


def find_row(rows: list[dict], model: str, sampler: str, steps: int, w: str) -> dict | None:
    """The guided row of (model, sampler, N, w), or None."""
    return next(
        (r for r in rows if (r["model"], r["sampler"], r["steps"], r["w"]) == (model, sampler, steps, w)),
        None,
    )


def guided_targets(rows: list[dict], replicates: dict[str, np.ndarray] | None = None) -> list[dict]:
    """[GD]'s targets, per w and student sampler: the 4-step student within 2 accuracy points and
    1.3x the Fréchet distance of the teacher's 256-step DDIM, the 8-step student within 1.15x, and
    the 1-step student below the teacher's 4-step DDIM; with `replicates` (of `add_intervals`),
    each Fréchet ratio's text also gives its 95% paired interval (`ratio_interval`)."""
    from .metrics import ratio_interval

    def interval(a: dict, b: dict) -> str:
        if replicates is None:
            return ""
        _, lo, hi = ratio_interval(
            a["frechet"], replicates[sample_key(a)], b["frechet"], replicates[sample_key(b)]
        )
        return f" [95% {lo:.3f}, {hi:.3f}]"

    out = []
    for w in sorted({r["w"] for r in rows}, key=float):
        ref = find_row(rows, "teacher", "ddim", TEACHER_STEPS, w)
        t4 = find_row(rows, "teacher", "ddim", 4, w)
        for sampler in ("ddim", "stochastic"):
            s4, s8, s1 = (find_row(rows, "student", sampler, n, w) for n in (4, 8, 1))
            checks = []
            if s4 is not None and ref is not None:
                gap = ref["accuracy"] - s4["accuracy"]
                checks.append(
                    (
                        "student_4_accuracy",
                        gap <= 0.02,
                        f"4-step accuracy {s4['accuracy']:.3f} vs "
                        f"teacher-256 {ref['accuracy']:.3f} (gap {100 * gap:.1f} points, <= 2)",
                    )
                )
                ratio = s4["frechet"] / ref["frechet"]
                checks.append(
                    (
                        "student_4_frechet",
                        ratio <= 1.3,
                        f"4-step FD / teacher-256 = {ratio:.3f}{interval(s4, ref)} (<= 1.3)",
                    )
                )
            if s8 is not None and ref is not None:
                ratio = s8["frechet"] / ref["frechet"]
                checks.append(
                    (
                        "student_8_frechet",
                        ratio <= 1.15,
                        f"8-step FD / teacher-256 = {ratio:.3f}{interval(s8, ref)} (<= 1.15)",
                    )
                )
            if s1 is not None and t4 is not None:
                checks.append(
                    (
                        "student_1_vs_teacher_4",
                        s1["frechet"] < t4["frechet"],
                        f"1-step FD {s1['frechet']:.4g} < teacher 4-step DDIM {t4['frechet']:.4g}"
                        f" (ratio {s1['frechet'] / t4['frechet']:.3f}{interval(s1, t4)})",
                    )
                )
            for name, met, text in checks:
                verdict = "met" if met else "MISSED"
                text = f"target w={w} student {sampler}: {text}: {verdict}"
                out.append(dict(name=name, w=w, sampler=sampler, met=bool(met), text=text))
    return out
