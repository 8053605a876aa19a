"""The papers' procedures (pipelines) against Torch-Pruning's one-shot and iterative pruning, with the same
fine-tune budget, at 2x and 3x MAC speed-up.

    python -m benchmarks.pipelines --quick            # ResNet-56 on Fashion-MNIST, 1 seed (benchmarks.compare's
                                                      # quick base network, cached under runs/checkpoints)
    python -m benchmarks.pipelines --quick --report   # only rewrite the table from the results file

Every method starts from the same trained base network and calibration batches (``benchmarks.compare``'s), reaches
the MAC speed-up target (Torch-Pruning's counter) its own way, and gets the same fine-tune budget: ``B`` training
images of SGD in total (``finetune_images x finetune_epochs`` of ``benchmarks.compare``'s config). A method with
several stages spends half of ``B`` evenly over its intermediate stages (credit accrues per stage and is spent once
it reaches one batch; the number of stages is the method's expected count, and what is left of the half when a
method runs fewer stages goes to the end) and the rest after its last stage; a one-shot method spends all of ``B``
after pruning. The methods:

* ``tp-oneshot-local``: Torch-Pruning's group L2 magnitude (``MagnitudeImportance(p=2)``), one uniform ratio found
  for the target (``prune(speed_up=...)``), then the whole budget;
* ``tp-oneshot-global``: the same with global ranking;
* ``tp-iterative``: group L2 magnitude, the same uniform ratio reached in 5 equal steps with a fine-tune between steps;
* ``pipeline:NAME``: ``create_pipeline(NAME).run(..., speed_up=target)`` with its paper's criterion, the budget
  spread over its stages (``2pfpce`` also gets ``evaluate``: accuracy on 500 validation images, for its
  phase threshold).

Results go to ``runs/pipelines-{quick,full}.jsonl`` (one line per finished method and target; an interrupted run
resumes) and the table into ``docs/benchmarks.md`` between the ``pipelines`` markers.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from entropy_importance import Engine, create_pipeline, prune
from entropy_importance.engine import count_params, tp_macs
from recipes.training import Split, Splits, evaluate, load_splits, train, trained_model

from .quality_cifar import FULL, QUICK, Config, calibration_batches

PIPELINES = ["luo-wu", "efp", "fec", "tang", "2pfpce"]
BASELINES = ["tp-oneshot-local", "tp-oneshot-global", "tp-iterative"]
ITERATIVE_STEPS = 5
STAGE_METRIC_IMAGES = 500
BEGIN, END = "<!-- pipelines:begin -->", "<!-- pipelines:end -->"


@dataclass
class FinetuneBudget:
    """``total`` fine-tune images, half spread over ``expected`` intermediate stages, the rest at the end."""

    splits: Splits
    cfg: Config
    seed: int
    total: int
    expected: int
    used: int = 0
    credit: float = 0.0
    calls: int = 0

    def _spend(self, model: nn.Module, images: int) -> None:
        images = min(images, self.total - self.used)
        if images <= 0:
            return
        order = torch.randperm(len(self.splits.train),
                               generator=torch.Generator().manual_seed(self.seed * 7919 + self.calls))[:images]
        self.calls += 1
        train(model, Split(self.splits.train.x[order], self.splits.train.y[order]), 1.0, self.cfg.finetune_lr,
              self.seed + self.calls, warmup=False, desc="fine-tune")
        self.used += images

    def stage(self, model: nn.Module, kind: str) -> None:
        """After an intermediate stage: accrue ``total / 2 / expected`` images, spend them once a batch is due."""
        if kind == "final" or self.expected == 0:
            return
        self.credit += self.total / 2 / self.expected
        due = min(int(self.credit), self.total // 2 - self.used)
        if due >= 128:
            self._spend(model, due)
            self.credit -= due

    def finish(self, model: nn.Module) -> None:
        self._spend(model, self.total - self.used)


def _budget(splits: Splits, cfg: Config, seed: int, expected: int) -> FinetuneBudget:
    images = len(splits.train) if cfg.finetune_images is None else cfg.finetune_images
    return FinetuneBudget(splits, cfg, seed, int(images * cfg.finetune_epochs), expected)


def _expected_stages(method: str, base: nn.Module) -> int:
    if method == "pipeline:luo-wu":
        return sum(isinstance(m, nn.Conv2d) for m in base.modules())
    if method == "pipeline:efp":
        return 4
    if method == "pipeline:2pfpce":
        return 10
    if method == "tp-iterative":
        return ITERATIVE_STEPS - 1
    return 0


def _run_method(method: str, base: nn.Module, example: torch.Tensor, calib: list, target: float,
                budget: FinetuneBudget, stage_metric: Callable[[nn.Module], float]) -> tuple[nn.Module, dict]:
    if method.startswith("tp-oneshot"):
        pruned, report = prune(base, example, "tp-magnitude-l2", speed_up=target, heads="last",
                               global_pruning=method.endswith("global"))
        return pruned, {"ratio": report.ratio}
    if method == "tp-iterative":
        ratio = Engine(base, example, "tp-magnitude-l2", heads="last").search_ratio(target)[0]
        engine = Engine(base, example, "tp-magnitude-l2", heads="last")
        model = None
        for step in engine.progressive(ratio, ITERATIVE_STEPS):
            model = step.model
            if step.index < ITERATIVE_STEPS:
                budget.stage(model, "step")
        return model, {"ratio": ratio, "steps": ITERATIVE_STEPS}
    name = method.partition(":")[2]
    pipe = create_pipeline(name)
    pruned, report = pipe.run(base, example, calibration_data=calib, speed_up=target,
                              finetune=lambda model, stage: budget.stage(model, stage.kind),
                              evaluate=stage_metric if name == "2pfpce" else None)
    return pruned, {"stages": len(report.stages)}


def run(cfg: Config, results: Path, cache: Path, methods: list[str], seed: int) -> None:
    done = _done(results)
    splits = load_splits(train_limit=cfg.train_limit, val_limit=cfg.val_limit, test_limit=cfg.test_limit)
    arch = cfg.archs[0]
    base = trained_model(arch, seed, splits, cfg.epochs, cfg.lr, cache)
    calib = calibration_batches(splits, cfg, seed)
    example = calib[0][0][:1]
    macs_before = tp_macs(base, example)
    stage_split = splits.val.head(STAGE_METRIC_IMAGES)
    if "base" not in done:
        _append(results, {"kind": "base", "arch": arch, "seed": seed, "params": count_params(base),
                          "macs": macs_before, "val": evaluate(base, splits.val), "test": evaluate(base, splits.test)})
    for method in methods:
        for target in cfg.speed_ups:
            key = f"{method}|{target}"
            if key in done:
                continue
            row = {"kind": "method", "arch": arch, "seed": seed, "method": method, "target": target}
            t0 = time.perf_counter()
            budget = _budget(splits, cfg, seed, _expected_stages(method, base))
            try:
                torch.manual_seed(seed)
                model, extra = _run_method(method, base, example, calib, target, budget,
                                           lambda m: evaluate(m, stage_split))
                row.update(extra, speed_up=macs_before / tp_macs(model, example), params=count_params(model),
                           val_before_ft=evaluate(model, splits.val))
                budget.finish(model)
                row.update(finetune_images=budget.used, val=evaluate(model, splits.val),
                           test=evaluate(model, splits.test))
            except Exception as e:  # noqa: BLE001 - a failing method is a result, not the end of the run
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            row["seconds"] = time.perf_counter() - t0
            _append(results, row)
            print(json.dumps(row), flush=True)


def _done(results: Path) -> set[str]:
    if not results.exists():
        return set()
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    return {"base" if r["kind"] == "base" else f"{r['method']}|{r['target']}" for r in rows}


def _append(results: Path, row: dict) -> None:
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a") as f:
        f.write(json.dumps(row) + "\n")


def render(results: Path, command: str) -> str:
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    base = next(r for r in rows if r["kind"] == "base")
    methods = [r for r in rows if r["kind"] == "method"]
    targets = sorted({r["target"] for r in methods})
    lines = [f"Measured {time.strftime('%Y-%m-%d')} with `{command}` (code: `benchmarks/pipelines.py`), "
             f"{base['arch']} seed {base['seed']} on Fashion-MNIST: base network {base['val']:.2f} % validation / "
             f"{base['test']:.2f} % test. Same base, calibration batches and fine-tune budget "
             f"({max((r.get('finetune_images', 0) for r in methods), default=0)} images of SGD) for every method.", "",
             "| method | " + " | ".join(f"{t:g}x: reached / val before ft / val / test" for t in targets) + " |",
             "|---|" + "---|" * len(targets)]
    names = list(dict.fromkeys(r["method"] for r in methods))
    for name in names:
        cells = []
        for t in targets:
            r = next((r for r in methods if r["method"] == name and r["target"] == t), None)
            if r is None:
                cells.append("not run")
            elif "error" in r:
                cells.append(f"error: {r['error'][:80]}")
            else:
                cells.append(f"{r['speed_up']:.2f}x / {r['val_before_ft']:.1f} / {r['val']:.2f} / {r['test']:.2f}")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(results: Path, docs: Path, command: str) -> None:
    page = docs / "benchmarks.md"
    text = page.read_text()
    table = f"{BEGIN}\n{render(results, command)}\n{END}"
    if BEGIN in text:
        text = text[:text.index(BEGIN)] + table + text[text.index(END) + len(END):]
    else:
        text += f"\n## The papers' procedures vs Torch-Pruning's one-shot and iterative pruning\n\n{table}\n"
    page.write_text(text)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="benchmarks.compare's quick configuration")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="*", default=BASELINES + [f"pipeline:{n}" for n in PIPELINES])
    p.add_argument("--results", default=None, help="JSON lines (default: runs/pipelines-{quick,full}.jsonl)")
    p.add_argument("--cache", default="runs/checkpoints", help="where trained base networks are cached")
    p.add_argument("--docs", default="docs")
    p.add_argument("--report", action="store_true", help="only rewrite the table from the results file")
    args = p.parse_args(argv)
    cfg = copy.deepcopy(QUICK if args.quick else FULL)
    results = Path(args.results or f"runs/pipelines-{'quick' if args.quick else 'full'}.jsonl")
    if not args.report:
        run(cfg, results, Path(args.cache), args.methods, args.seed)
    command = "python -m benchmarks.pipelines" + (" --quick" if args.quick else "") + (
        f" --seed {args.seed}" if args.seed else "")
    write_report(results, Path(args.docs), command)


if __name__ == "__main__":
    main()
