"""The pipelines section of ``docs/quality.md``, written from the ``pipeline`` rows of
:mod:`benchmarks.quality_pipelines` and the one-shot cells they are paired with (every number read from a row)."""

from __future__ import annotations

import statistics
from collections import defaultdict

from .quality_stats import RANDOM, Cell, Interval, mean_std, paired_interval

#: the one-shot reference of each variant: the cells' regime with the same recovery and the same training
REFERENCE_REGIME = {"paper": "ft", "even": "ft", "paper+reconstruct": "reconstruct+ft",
                    "even+reconstruct": "reconstruct+ft", "reconstruct": "reconstruct"}
REFERENCE = "tp-magnitude-l2"
VARIANT_TEXT = {"paper": "no recovery, fine-tune budget in the papers' structure (half over the stages, half at the "
                "end)", "even": "no recovery, the budget split evenly over the stages",
                "paper+reconstruct": "recovery after every stage, the papers' budget structure",
                "even+reconstruct": "recovery after every stage, the budget split evenly over the stages",
                "reconstruct": "recovery after every stage, no training"}


def _runs(rows: list[dict], setup: str) -> dict[tuple, dict[int, dict]]:
    """``{(arch, target, method, variant): {seed: row}}`` of the pipeline rows of ``setup`` without an error."""
    out: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for r in rows:
        if r.get("kind") == "pipeline" and r.get("setup") == setup and r.get("top1") is not None:
            out[(r["arch"], r["target"], r["method"], r["variant"])][r["seed"]] = r
    return out


def _interval(a: dict[int, float], b: dict[int, float]) -> Interval | None:
    seeds = sorted(set(a) & set(b))
    return paired_interval([a[s] for s in seeds], [b[s] for s in seeds]) if seeds else None


def _fmt(iv: Interval | None) -> str:
    if iv is None:
        return "–"
    if iv.low is None:
        return f"{iv.mean:+.2f} (1 seed)"
    return f"{iv.mean:+.2f} [{iv.low:+.2f}, {iv.high:+.2f}] {iv.verdict}"


def pipeline_section(rows: list[dict], setup: str, table: dict[tuple, dict[str, Cell]], n_seeds: int,
                     finetune_images: int) -> list[str]:
    """Markdown lines: per architecture and target, every pipeline variant against one-shot global L2 with the same
    recovery and budget (paired by base seed, 95 % interval) and against random; then the sentences the issue asks
    for (does any pipeline beat one-shot global L2 at the largest target?)."""
    runs = _runs(rows, setup)
    errors = [r for r in rows if r.get("kind") == "pipeline" and r.get("setup") == setup and r.get("top1") is None]
    if not runs and not errors:
        return []
    L = ["## The papers' procedures (pipelines)", "",
         "`python -m benchmarks.quality_pipelines`: each pipeline (`create_pipeline(name).run(base, ..., "
         "speed_up=target)`, its paper's criterion) on the same bases and calibration images as the cells above; "
         f"the fine-tune budget is the cells' short fine-tune ({finetune_images} training images, each once) split "
         "over the stages by `StageBudget`. Variants: " + "; ".join(f"*{v}*: {t}" for v, t in VARIANT_TEXT.items())
         + ". Each is paired by base seed with one-shot global L2 (`tp-magnitude-l2`, global mode) under the same "
         "recovery and training (regime " + ", ".join(f"`{r}` for *{v}*" for v, r in REFERENCE_REGIME.items())
         + "); Δ is pipeline − one-shot with its 95 % interval. One-shot local L2 and global random selection are "
         "listed in the same regimes for scale.", ""]
    verdicts = []
    for arch, target in sorted({(k[0], k[1]) for k in runs}):
        L += [f"### {arch}, {target:g}x MACs", "",
              "| method | variant | top-1 | MACs kept | Δ vs one-shot global L2 [95 % CI] | Δ vs random |",
              "|---|---|---|---|---|---|"]
        for regime in dict.fromkeys(REFERENCE_REGIME.values()):
            for mode, method in (("global", REFERENCE), ("local", REFERENCE), ("global", RANDOM)):
                c = table.get((arch, mode, target, regime), {}).get(method)
                if c is not None:
                    L.append(f"| one-shot {mode} `{method}` | regime `{regime}` | {_ms(c.top1)} | "
                             f"{c.macs_ratio:.3f} | – | – |")
        for (a, t, method, variant), by_seed in sorted(runs.items(), key=lambda kv: (kv[0][2], list(
                VARIANT_TEXT).index(kv[0][3]) if kv[0][3] in VARIANT_TEXT else 9)):
            if (a, t) != (arch, target):
                continue
            regime = REFERENCE_REGIME.get(variant)
            top1 = {s: r["top1"] for s, r in by_seed.items()}
            ref = table.get((arch, "global", target, regime), {})
            vs_ref = _interval(top1, ref[REFERENCE].top1) if REFERENCE in ref else None
            vs_rnd = _interval(top1, ref[RANDOM].top1) if RANDOM in ref else None
            macs = statistics.fmean(r["macs_ratio"] for r in by_seed.values())
            L.append(f"| {method} | {variant} | {_ms(top1)} | {macs:.3f} | {_fmt(vs_ref)} | {_fmt(vs_rnd)} |")
            if vs_ref is not None:
                verdicts.append((arch, target, method, variant, vs_ref))
        L.append("")
    if errors:
        L += ["Pipeline runs that failed: " + "; ".join(
            f"{r['arch']} seed {r['seed']} {r['method']} {r['target']:g}x {r['variant']}: "
            f"{(r.get('error') or '')[:120]}" for r in errors) + ".", ""]
    L += _sentences(verdicts, n_seeds)
    L += _recovery_sentences(runs)
    return L


#: (with recovery, without): variants that differ only in the recovery between stages
RECOVERY_PAIRS = (("paper+reconstruct", "paper"), ("even+reconstruct", "even"))


def _recovery_sentences(runs: dict[tuple, dict[int, dict]]) -> list[str]:
    """Does recovery between stages help a pipeline at the same budget? Paired by base seed, per pipeline setting."""
    out = []
    for with_rec, without in RECOVERY_PAIRS:
        ivs = []
        for (arch, target, method, variant), by_seed in sorted(runs.items()):
            other = runs.get((arch, target, method, without))
            if variant != with_rec or other is None:
                continue
            iv = _interval({s: r["top1"] for s, r in by_seed.items()}, {s: r["top1"] for s, r in other.items()})
            if iv is not None and iv.low is not None:
                ivs.append((arch, target, method, iv))
        if not ivs:
            continue
        n = {v: sum(iv.verdict == v for *_, iv in ivs) for v in ("better", "tie", "worse")}
        lo = min(ivs, key=lambda v: v[3].mean)
        hi = max(ivs, key=lambda v: v[3].mean)
        out.append(f"* Recovery between stages at the same budget (*{with_rec}* − *{without}*, paired by seed): "
                   f"better in {n['better']}, tie in {n['tie']}, worse in {n['worse']} of {len(ivs)} (arch, target, "
                   f"pipeline) settings; from {lo[3].mean:+.2f} pp ({lo[0]} {lo[1]:g}x {lo[2]}) to "
                   f"{hi[3].mean:+.2f} pp ({hi[0]} {hi[1]:g}x {hi[2]}).")
    return out + [""] if out else []


def _ms(top1: dict[int, float]) -> str:
    m, s = mean_std(list(top1.values()))
    return (f"{m:.2f}" if len(top1) == 1 else f"{m:.2f} ± {s:.2f}") + f" (n={len(top1)})"


def _sentences(verdicts: list[tuple], n_seeds: int) -> list[str]:
    """What the pipeline table says, one computed sentence per finding."""
    if not verdicts:
        return []
    out = ["What the pipeline tables say (computed from them):", ""]
    targets = sorted({v[1] for v in verdicts})
    for target in targets:
        here = [v for v in verdicts if v[1] == target]
        better = [v for v in here if v[4].verdict == "better"]
        worse = [v for v in here if v[4].verdict == "worse"]
        if better:
            out.append(f"* At {target:g}x, beating one-shot global L2 outside the interval: " + "; ".join(
                f"{a} {m} ({var}, {iv.mean:+.2f} pp)" for a, _, m, var, iv in better) + ".")
        else:
            best = max(here, key=lambda v: v[4].mean)
            out.append(f"* At {target:g}x no pipeline beats one-shot global L2 outside its interval (of {len(here)} "
                       f"pipeline settings; the closest: {best[0]} {best[2]} {best[3]}, {_fmt(best[4])}).")
        if worse:
            out.append(f"* At {target:g}x, {len(worse)} of {len(here)} pipeline settings are worse than one-shot "
                       "global L2 outside the interval.")
    if any(v[4].n < n_seeds for v in verdicts):
        out.append(f"* Some settings have fewer than the {n_seeds} planned seeds (n in the tables).")
    out.append("")
    return out
