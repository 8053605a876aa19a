"""How much calibration data the recovery step needs: ``recover()`` with 128 / 512 / 1024 / 2048 training images on
the quality benchmark's bases, accuracy and seconds.

    python -m benchmarks.quality_calibration --jobs 2      # resumes from docs/quality.jsonl
    python -m benchmarks.quality_calibration --quick       # the miniature (runs/quality/quick/)

Per base (arch, seed) and MAC target, the base is pruned once exactly as the cells of :mod:`benchmarks.quality`
prune it with Torch-Pruning's L2 in local mode (the uniform ratio of the cells, so the same pruned network as that
cell); then each recovery method of :data:`METHODS` runs with each calibration size of :data:`SIZES`: the first
``n`` images of one seeded permutation of the training split (the sets are nested: 128 of them are among the 512),
the same permutation the cells draw their 1024 calibration images from. Each result is measured on the test set and
the held-out validation images. Rows of kind ``calibration`` (one per arch, seed, target, method, size) go to the
cells' file; :func:`calibration_section` renders them in ``docs/quality.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn

import entropy_importance as ei
from recipes.fmnist_models import FMNIST_MODELS
from recipes.training import batches

from .quality import (
    FULL,
    QUICK,
    ROOT,
    Context,
    append_row,
    base_model,
    base_path,
    code_version,
    local_ratios,
    read_rows,
    run_units,
)
from .quality_stats import mean_std

SIZES = (128, 512, 1024, 2048)
METHODS = ("reconstruct", "reconstruct+bn", "bn")
CRITERION = "tp-magnitude-l2"


def row_key(row: dict) -> tuple | None:
    if row.get("kind") != "calibration":
        return None
    return ("calibration", row["setup"], row["arch"], row["seed"], row["target"], row["method"], row["images"])


def calibration_images(ctx: Context, seed: int, n: int) -> list:
    """The first ``n`` images of the seeded permutation the cells' calibration images come from, in batches."""
    part = ctx.splits.train.sample(n, 10_000 + seed)
    return [(x.to(ctx.device), y.to(ctx.device)) for x, y in batches(part, ctx.cfg.calibration_batch_size)]


def _unit(ctx: Context, arch: str, seed: int, ratios: dict, sizes: tuple[int, ...], methods: tuple[str, ...]) -> str:
    torch.set_num_threads(ctx.threads)
    done = {k for k in map(row_key, read_rows(ctx.rows)) if k is not None}
    setup = ctx.cfg.setup_id()
    base: nn.Module | None = None
    example = torch.zeros(1, 1, 28, 28, device=ctx.device)
    count = 0
    for target in ctx.cfg.targets:
        todo = [(m, n) for m in methods for n in sizes
                if ("calibration", setup, arch, seed, target, m, n) not in done]
        if not todo:
            continue
        base = base if base is not None else base_model(ctx, arch, seed)
        pruned, report = ei.prune(base, example, CRITERION, ratio=ratios[(arch, target)], heads="last")
        for method, n in todo:
            data = calibration_images(ctx, seed, n)
            t0, c0 = time.perf_counter(), time.process_time()
            model, rep = ei.recover(base, pruned, data, method=method)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            summary = rep.summary()
            row = {"kind": "calibration", "arch": arch, "seed": seed, "target": target, "method": method,
                   "images": n, "criterion": CRITERION, "mode": "local", "top1": ctx.test(model),
                   "val_top1": ctx.val(model), "macs_ratio": report.macs_after / report.macs_before,
                   "recover_seconds": seconds, "recover_cpu_seconds": cpu,
                   "heldout_before": summary["heldout_before"], "heldout_after": summary["heldout_after"]}
            append_row(ctx.rows, ctx.stamp(row))
            print(f"[{arch} s{seed} {target:g}x {method} {n}] {row['top1']:.2f} ({seconds:.1f} s)", flush=True)
            count += 1
    return f"{arch} seed {seed}: {count} recoveries"


def calibration_section(rows: list[dict], setup: str) -> list[str]:
    """Markdown lines: per architecture and target, test top-1 (mean ± std over seeds) and recovery seconds of each
    method at each calibration size."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r.get("kind") == "calibration" and r.get("setup") == setup and r.get("top1") is not None:
            groups[(r["arch"], r["target"], r["method"], r["images"])].append(r)
    if not groups:
        return []
    sizes = sorted({k[3] for k in groups})
    L = ["## How much calibration data the recovery step needs", "",
         "`python -m benchmarks.quality_calibration`: the local `tp-magnitude-l2` network of each base and target "
         "(the same pruned network as that cell), repaired by each recovery method with the first n images of one "
         "seeded sample of the training split. Test top-1, mean ± std over base seeds (n), and the recovery's wall "
         "seconds (mean) on one CPU thread.", "",
         "| arch | target | method | " + " | ".join(f"{n} images" for n in sizes) + " |",
         "|---|---|---|" + "---|" * len(sizes)]
    for arch, target, method in sorted({k[:3] for k in groups}, key=lambda k: (k[0], k[1], METHODS.index(k[2])
                                                                                if k[2] in METHODS else 9)):
        vals = []
        for n in sizes:
            rs = groups.get((arch, target, method, n))
            if not rs:
                vals.append("–")
                continue
            m, s = mean_std([r["top1"] for r in rs])
            secs = sum(r["recover_seconds"] for r in rs) / len(rs)
            vals.append((f"{m:.2f}" if len(rs) == 1 else f"{m:.2f} ± {s:.2f}") + f" (n={len(rs)}), {secs:.1f} s")
        L.append(f"| {arch} | {target:g}x | {method} | " + " | ".join(vals) + " |")
    return L + [""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality_calibration", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the miniature (benchmarks.quality --quick's base)")
    p.add_argument("--archs", nargs="+", choices=sorted(FMNIST_MODELS))
    p.add_argument("--seeds", nargs="+", type=int)
    p.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--rows", type=Path)
    p.add_argument("--cache", type=Path)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    if any(n < 2 for n in args.sizes):
        p.error(f"--sizes must be calibration image counts >= 2, got {args.sizes}")
    cfg = QUICK if args.quick else FULL
    for name in ("archs", "seeds"):
        if getattr(args, name):
            cfg = replace(cfg, **{name: tuple(getattr(args, name))})
    rows = args.rows or (Path("runs/quality/quick/quality.jsonl") if args.quick else Path("docs/quality.jsonl"))
    cache = args.cache or (Path("runs/quality/quick") if args.quick else ROOT / "benchmarks" / "quality_bases")
    threads = args.threads or (1 if args.jobs > 1 else torch.get_num_threads())
    torch.set_num_threads(threads)
    ctx = Context(cfg, rows, cache, "cpu", threads, quiet=True)
    ratios = local_ratios(ctx, read_rows(rows))
    units = [(ctx, a, s, ratios, tuple(args.sizes), tuple(args.methods)) for s in cfg.seeds for a in cfg.archs
             if args.quick or base_path(ctx, a, s).exists()]
    run_units(_unit, units, args.jobs)
    from .quality_report import write_report

    out = rows.parent if args.quick else Path("docs")
    page = write_report(read_rows(rows), cfg if args.quick else FULL, out, rows,
                        "python -m benchmarks.quality" + (" --quick" if args.quick else ""), code_version())
    print(f"report: {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
