"""The papers' procedures (pipelines) in the quality benchmark: each at 2x and 3x MACs on the same base networks,
calibration images and fine-tune images as the one-shot cells of :mod:`benchmarks.quality`, with and without the
recovery step between stages, at the same total fine-tune budget split two ways.

    python -m benchmarks.quality_pipelines --archs resnet20 --jobs 2   # the run (resumes from docs/quality.jsonl)
    python -m benchmarks.quality_pipelines --quick                      # the miniature (runs/quality/quick/)

Each pipeline (``create_pipeline(name).run(base, ..., speed_up=target)``, the paper's criterion) runs in these
variants (:data:`VARIANTS`):

* ``paper``: no recovery; the fine-tune budget in the papers' structure (:class:`~entropy_importance.StageBudget`
  ``"paper"``: half of it spread over the pruning stages, half after the last one);
* ``even``: no recovery; the budget split evenly over all stages (the same total);
* ``paper+reconstruct``: the ``paper`` budget with ``recover="reconstruct"`` after every stage (before its fine-tune);
* ``even+reconstruct``: recovery after every stage, the budget split evenly over all stages;
* ``reconstruct``: recovery after every stage and no training at all (the counterpart of the cells'
  ``reconstruct`` regime).

The budget is the cells' short fine-tune: the same ``finetune_images`` training images of the base's seed, each used
once, counted in batches (a stage gets a whole number of batches, possibly none; the images of consecutive stages
follow each other in one fixed order), cosine from ``finetune_lr`` within each stage. So a pipeline with the budget
is compared, paired by base seed, with one-shot pruning followed by the same fine-tune: the cells ``tp-magnitude-l2``
local / global, regime ``ft`` (``reconstruct+ft`` for the variants with recovery), and ``tp-random`` as the
random baseline; ``reconstruct`` with the cells' ``reconstruct`` regime. 2PFPCE's phase threshold reads accuracy
(in [0, 1]) on the first ``STAGE_METRIC_IMAGES`` validation images, never the test set.

Rows of kind ``pipeline`` go to the same file as the cells (``docs/quality.jsonl``), one per (arch, seed, pipeline,
target, variant), appended as each finishes; :mod:`benchmarks.quality_report` renders them.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn

import entropy_importance as ei
from entropy_importance.engine import count_params, tp_macs
from entropy_importance.pipelines import Stage, StageBudget, planned_stages
from recipes.fmnist_models import FMNIST_MODELS
from recipes.training import Split, evaluate, train

from .quality import FULL, QUICK, ROOT, Context, append_row, base_model, base_path, code_version, read_rows, run_units

PIPELINES = ("luo-wu", "efp", "fec", "tang", "2pfpce")


@dataclass(frozen=True)
class Variant:
    """How a pipeline is run: the recovery after each stage, and the fine-tune budget's structure (None: none)."""

    recover: str | None
    structure: str | None


VARIANTS = {
    "paper": Variant(None, "paper"),
    "even": Variant(None, "even"),
    "paper+reconstruct": Variant("reconstruct", "paper"),
    "even+reconstruct": Variant("reconstruct", "even"),
    "reconstruct": Variant("reconstruct", None),
}
#: validation images 2PFPCE's phase threshold is measured on
STAGE_METRIC_IMAGES = 500


def module_version() -> str:
    return hashlib.sha1(Path(__file__).read_bytes()).hexdigest()[:12]


def row_key(row: dict) -> tuple | None:
    if row.get("kind") != "pipeline":
        return None
    return ("pipeline", row["setup"], row["arch"], row["seed"], row["method"], row["target"], row["variant"])


class StageFinetune:
    """``finetune(model, stage)`` for a pipeline: the stage's share of ``budget`` batches (:class:`StageBudget`),
    trained in place on the next images of ``split`` (each image used once over the whole run)."""

    def __init__(self, ctx: Context, split: Split, budget: StageBudget, seed: int) -> None:
        self.ctx, self.split, self.budget, self.seed = ctx, split, budget, seed
        self.cursor = self.batches = 0

    def __call__(self, model: nn.Module, stage: Stage) -> None:
        steps = self.budget(stage)
        if steps <= 0:
            return
        size = self.ctx.cfg.batch_size
        part = Split(self.split.x[self.cursor:self.cursor + steps * size], self.split.y[self.cursor:self.cursor +
                                                                                        steps * size])
        self.cursor += len(part)
        self.batches += steps
        train(model, part, 1.0, self.ctx.cfg.finetune_lr, self.seed + stage.index, self.ctx.cfg.batch_size,
              self.ctx.cfg.weight_decay, warmup=False, desc="fine-tune", runtime=self.ctx.silent)


def run_pipeline(ctx: Context, base: nn.Module, base_row: dict, arch: str, seed: int, name: str, target: float,
                 variant: str) -> dict:
    """One pipeline run; returns its row (an ``error`` field where the pipeline failed)."""
    cfg, v = ctx.cfg, VARIANTS[variant]
    example = torch.zeros(1, 1, 28, 28, device=ctx.device)
    head = {"kind": "pipeline", "arch": arch, "seed": seed, "method": f"pipeline:{name}", "target": target,
            "variant": variant, "recover": v.recover, "structure": v.structure, "base_top1": base_row["top1"],
            "n_test": len(ctx.splits.test), "n_val": len(ctx.splits.val.head(cfg.cell_val_images))}
    pipe = ei.create_pipeline(name)
    finetune = None
    if v.structure is not None:
        total = cfg.finetune_images // cfg.batch_size
        budget = StageBudget(total, planned_stages(pipe, base, speed_up=target), structure=v.structure)
        finetune = StageFinetune(ctx, ctx.finetune_split(seed), budget, seed + 1)
    stage_split = ctx.splits.val.head(STAGE_METRIC_IMAGES)
    metric = (lambda m: evaluate(m, stage_split, 100, ctx.silent) / 100) if name == "2pfpce" else None
    torch.manual_seed(seed)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        pruned, report = pipe.run(base, example, calibration_data=ctx.calibration(seed), speed_up=target,
                                  finetune=finetune, evaluate=metric, recover=v.recover)
    except Exception as e:  # noqa: BLE001 - a pipeline that fails is a result
        return {**head, "top1": None, "error": f"{type(e).__name__}: {e}"[:300],
                "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    macs_before, macs_after = tp_macs(base, example), tp_macs(pruned, example)
    return {**head, "top1": ctx.test(pruned), "val_top1": ctx.val(pruned), "macs_ratio": macs_after / macs_before,
            "params_ratio": count_params(pruned) / count_params(base), "speed_up": macs_before / macs_after,
            "stages": len(report.stages),
            "finetune_images": 0 if finetune is None else finetune.cursor,
            "finetune_batches": 0 if finetune is None else finetune.batches,
            "recover_seconds": sum((s.recovery or {}).get("seconds", 0.0) for s in report.stages),
            "seconds": seconds, "cpu_seconds": cpu}


def _unit(ctx: Context, arch: str, seed: int, names: tuple[str, ...], variants: tuple[str, ...]) -> str:
    torch.set_num_threads(ctx.threads)
    done = {k for k in map(row_key, read_rows(ctx.rows)) if k is not None}
    setup = ctx.cfg.setup_id()
    todo = [(t, n, v) for t in ctx.cfg.targets for n in names for v in variants
            if ("pipeline", setup, arch, seed, f"pipeline:{n}", t, v) not in done]
    if not todo:
        return f"{arch} seed {seed}: nothing to do"
    base = base_model(ctx, arch, seed)
    base_row = next(r for r in read_rows(ctx.rows) if r.get("kind") == "base" and r["arch"] == arch
                    and r["seed"] == seed and r["setup_base"] == ctx.cfg.base_id(arch))
    for target, name, variant in todo:
        row = run_pipeline(ctx, base, base_row, arch, seed, name, target, variant)
        append_row(ctx.rows, ctx.stamp({**row, "pipelines_code": module_version()}))
        shown = "error" if row["top1"] is None else f"{row['top1']:.2f} at {row['speed_up']:.2f}x"
        print(f"[{arch} s{seed} {target:g}x {name} {variant}] {shown} ({row['seconds']:.0f} s)", flush=True)
    return f"{arch} seed {seed}: {len(todo)} pipeline runs"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality_pipelines", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the miniature (benchmarks.quality --quick's base)")
    p.add_argument("--archs", nargs="+", choices=sorted(FMNIST_MODELS), help="architectures (default: all)")
    p.add_argument("--seeds", nargs="+", type=int, help="base seeds (default: the configuration's)")
    p.add_argument("--pipelines", nargs="+", choices=PIPELINES, default=list(PIPELINES))
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--rows", type=Path)
    p.add_argument("--cache", type=Path)
    p.add_argument("--jobs", type=int, default=1, help="worker processes, one (arch, seed) each")
    p.add_argument("--threads", type=int)
    p.add_argument("--untrained-bases", action="store_true",
                   help="train a base that is not cached (by default such an (arch, seed) is skipped: "
                        "`python -m benchmarks.quality` trains the bases)")
    args = p.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    for name in ("archs", "seeds"):
        if getattr(args, name):
            cfg = replace(cfg, **{name: tuple(getattr(args, name))})
    rows = args.rows or (Path("runs/quality/quick/quality.jsonl") if args.quick else Path("docs/quality.jsonl"))
    cache = args.cache or (Path("runs/quality/quick") if args.quick else ROOT / "benchmarks" / "quality_bases")
    threads = args.threads or (1 if args.jobs > 1 else torch.get_num_threads())
    torch.set_num_threads(threads)
    ctx = Context(cfg, rows, cache, "cpu", threads, quiet=True)
    units = []
    for seed in cfg.seeds:
        for arch in cfg.archs:
            if not (args.quick or args.untrained_bases or base_path(ctx, arch, seed).exists()):
                print(f"{arch} seed {seed}: no cached base (run `python -m benchmarks.quality --archs {arch} --seeds "
                      f"{seed}` first, or pass --untrained-bases)", flush=True)
                continue
            units.append((ctx, arch, seed, tuple(args.pipelines), tuple(args.variants)))
    run_units(_unit, units, args.jobs)
    from .quality_report import write_report

    out = rows.parent if args.quick else Path("docs")
    page = write_report(read_rows(rows), cfg if args.quick else FULL, out, rows,
                        "python -m benchmarks.quality" + (" --quick" if args.quick else ""), code_version())
    print(f"report: {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
