"""Every entropy criterion vs Torch-Pruning's built-ins on real data, and the ablations that set our defaults.

    python -m benchmarks.compare --quick            # ResNet-56, 1 seed, subsets: about 25 min on 2 CPU cores
    python -m benchmarks.compare                    # ResNet-56 + VGG-16-BN, 3 seeds, full splits (hours on a CPU)
    python -m benchmarks.compare --quick --report   # only rewrite docs from the results file

For each architecture and seed: train a base network on Fashion-MNIST (cached), then for each criterion and
ranking mode (local / global) prune it progressively (``Engine.progressive``, small equal steps, Torch-Pruning's MAC
counter) and take a snapshot when the MAC speed-up first reaches each target (2x, 3x). Every snapshot is
evaluated on the validation and test splits right away, after re-estimating BatchNorm statistics on the
calibration batches (no weight changes), and after an identical short fine-tune. Every criterion
gets the same model, the same calibration batches (drawn from the training split), the same step schedule and the
same fine-tune; data-dependent criteria (ours, Taylor, activation) are refreshed before every step.

Ablations (validation split only, never test; first seed of each architecture in ``ablation_archs``): one option
of one criterion changed at a time from the current default, local ranking, pruned to 2x, then BatchNorm
statistics re-estimated on the calibration batches (no fine-tune: without it accuracy at 2x is at chance for every
option, which would decide nothing); the per-layer normaliser for global ranking likewise at 2x global. An
alternative replaces the default only when it beats it on validation accuracy by more than two standard errors of
the difference (binomial, ``2 * sqrt(2 p (1 - p) / n)``); otherwise the default stays. The main grid then runs
each criterion with the options that won (recorded in every row), and the package defaults are set to match.

Results go to a JSON-lines file (one line per finished run, so an interrupted run resumes where it stopped), and
are summarised in ``docs/benchmarks.md`` (between the ``compare`` markers), ``docs/benchmarks.json`` and
``docs/benchmarks_accuracy.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from entropy_importance import Engine, create_importance, list_importances
from entropy_importance.engine import count_params, tp_macs
from recipes.training import (
    Split,
    Splits,
    batches,
    evaluate,
    load_splits,
    recalibrate_batchnorm,
    train,
    trained_model,
)

from .compare_report import ablation_decisions, plan, write_report

OURS = list_importances(source="entropy-importance")
BUILTINS = ["tp-magnitude-l1", "tp-magnitude-l2", "tp-fpgm", "tp-lamp", "tp-bn-scale", "tp-taylor", "tp-random",
            "tp-activation"]

#: one option changed at a time from the default; the first value listed is the current default of the code
#: (the 2026-11-21 quick run started from: where="input" everywhere, bins=None, construction="histogram",
#: independence="cosine", normalizer="mean"; its plan row in the results file records that).
ABLATIONS: dict[str, dict[str, list]] = {
    "gap-entropy": {"bins": [None, 16, 64], "edges": ["channel", "layer", "quantile"], "where": ["output", "input"]},
    "feature-map-entropy": {"bins": [16, None, 64], "bin_range": ["layer", "map"], "where": ["output", "input"]},
    "conditional-entropy": {"bins": [8, None, 32], "edges": ["channel", "quantile"], "where": ["output", "input"]},
    "channel-similarity-entropy": {"construction": ["kernel", "histogram"], "edges": ["layer", "channel"]},
    "information-capacity": {"sigma": [1.0, 0.5, 2.0], "independence": ["euclidean", "cosine"],
                             "edges": ["layer", "channel"]},
}
#: per-layer normaliser for global ranking, per criterion, current default first.
NORMALIZERS: dict[str, list] = {
    "gap-entropy": ["mean", "max", "standarization"],
    "feature-map-entropy": ["standarization", "mean", "max"],
    "conditional-entropy": ["mean", "max", "standarization"],
    "channel-similarity-entropy": ["mean", "max", "standarization"],
    "information-capacity": ["standarization", "mean", "max"],
}


@dataclass
class Config:
    archs: list[str]
    seeds: list[int]
    train_limit: int | None
    val_limit: int | None
    test_limit: int | None
    epochs: float
    lr: float = 0.1
    speed_ups: list[float] = field(default_factory=lambda: [2.0, 3.0])
    modes: list[str] = field(default_factory=lambda: ["local", "global"])
    steps: int = 40                      # equal steps towards a 0.9 channel ratio (40: 2.25 % of channels a step)
    calibration_batches: int = 4
    calibration_batch_size: int = 64
    finetune_images: int | None = 4000   # per fine-tune (None: the whole training split)
    finetune_epochs: float = 1.0
    finetune_lr: float = 0.01
    ablation_archs: list[str] = field(default_factory=lambda: ["resnet56"])


QUICK = Config(archs=["resnet56"], seeds=[0], train_limit=20000, val_limit=2000, test_limit=2000, epochs=2, steps=25)
FULL = Config(archs=["resnet56", "vgg16"], seeds=[0, 1, 2], train_limit=None, val_limit=None, test_limit=None,
              epochs=15, steps=100, calibration_batches=8, finetune_images=None, finetune_epochs=2)


class _Timed:
    """Wall time spent measuring the criterion (calibration, gradients) and scoring groups of an engine's steps."""

    def __init__(self, engine: Engine) -> None:
        self.calibration = self.scoring = 0.0
        measure = engine.measure

        def timed_measure(work, fresh):
            t = time.perf_counter()
            try:
                return measure(work, fresh)
            finally:
                self.calibration += time.perf_counter() - t

        engine.measure = timed_measure

    def scored(self, pruner) -> None:
        estimate = pruner.estimate_importance

        def timed_estimate(group):
            t = time.perf_counter()
            try:
                return estimate(group)
            finally:
                self.scoring += time.perf_counter() - t

        pruner.estimate_importance = timed_estimate


def progressive(model: nn.Module, criterion: str, calibration: list, targets: list[float], global_pruning: bool,
                steps: int, seed: int, **options) -> Iterator[tuple[float, float, nn.Module, _Timed]]:
    """Prune a copy of ``model`` in ``steps`` equal steps towards ratio 0.9 (the engine's progressive schedule,
    the criterion re-measured before each step); yield ``(target, reached, snapshot, times)`` the first time the MAC
    speed-up reaches each target."""
    torch.manual_seed(seed)
    example = calibration[0][0][:1]
    engine = Engine(model, example, create_importance(criterion, **options), calibration_data=calibration,
                    heads="last", global_pruning=global_pruning)
    times = _Timed(engine)
    pending = sorted(targets)
    for step in engine.progressive(0.9, steps):
        if step.index == 1:
            times.scored(step.pruner)
        while pending and step.speed_up is not None and step.speed_up >= pending[0]:
            yield pending.pop(0), step.speed_up, copy.deepcopy(step.model), times
        if not pending:
            return
    raise RuntimeError(f"{criterion}: speed-up {pending[0]} not reached in {steps} steps")


def _finetune(model: nn.Module, splits: Splits, cfg: Config, seed: int) -> nn.Module:
    part = splits.train
    if cfg.finetune_images is not None:
        order = torch.randperm(len(part), generator=torch.Generator().manual_seed(seed + 99))[:cfg.finetune_images]
        part = Split(part.x[order], part.y[order])
    return train(model, part, cfg.finetune_epochs, cfg.finetune_lr, seed, warmup=False, desc="fine-tune")


def calibration_batches(splits: Splits, cfg: Config, seed: int) -> list:
    """The same calibration batches for every criterion: a seeded sample of the training split."""
    n = cfg.calibration_batches * cfg.calibration_batch_size
    idx = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(seed + 7))[:n]
    return list(batches(Split(splits.train.x[idx], splits.train.y[idx]), cfg.calibration_batch_size))


def run_grid(cfg: Config, results: Path, cache: Path) -> None:
    done = _done_keys(results)
    splits = load_splits(train_limit=cfg.train_limit, val_limit=cfg.val_limit, test_limit=cfg.test_limit)
    criteria = OURS + BUILTINS
    for arch in cfg.archs:
        for seed in cfg.seeds:
            base = trained_model(arch, seed, splits, cfg.epochs, cfg.lr, cache)
            calib = calibration_batches(splits, cfg, seed)
            _record(results, done, {"kind": "base", "arch": arch, "seed": seed, "params": count_params(base),
                                    "macs": tp_macs(base, calib[0][0][:1]), "val": evaluate(base, splits.val),
                                    "test": evaluate(base, splits.test)})
            if arch in cfg.ablation_archs and seed == cfg.seeds[0]:
                _ablations(cfg, arch, seed, base, splits, calib, results, done)
            chosen = chosen_options(results)
            jobs = [(m, c) for m in cfg.modes for c in criteria if _key("prune", arch, seed, m, c) not in done]
            for mode, criterion in tqdm(jobs, desc=f"{arch} seed {seed}", unit="run"):
                try:
                    rows = _prune_run(cfg, arch, seed, base, splits, calib, mode, criterion,
                                      chosen.get(criterion, {}))
                except Exception as e:  # noqa: BLE001 - a failing criterion is a result, not the end of the run
                    rows = [{"kind": "prune", "arch": arch, "seed": seed, "mode": mode, "criterion": criterion,
                             "error": f"{type(e).__name__}: {e}"}]
                for row in rows:
                    _record(results, done, row)


def chosen_options(results: Path) -> dict[str, dict]:
    """Options that won their ablation (differing from the current default), per criterion."""
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    chosen: dict[str, dict] = {}
    for d in ablation_decisions(rows, *plan(rows, ABLATIONS, NORMALIZERS)):
        if d["chosen"] != d["default"]:
            chosen.setdefault(d["criterion"], {})[d["option"]] = d["chosen"]
    return chosen


def _prune_run(cfg, arch, seed, base, splits, calib, mode, criterion, options) -> list[dict]:
    rows = []
    t0 = time.perf_counter()
    for target, reached, model, times in progressive(base, criterion, calib, cfg.speed_ups, mode == "global",
                                                     cfg.steps, seed, **options):
        row = {"kind": "prune", "arch": arch, "seed": seed, "mode": mode, "criterion": criterion,
               "options": options, "target": target, "speed_up": reached, "params": count_params(model),
               "calibration_s": times.calibration, "scoring_s": times.scoring,
               "prune_s": time.perf_counter() - t0,
               "val": evaluate(model, splits.val), "test": evaluate(model, splits.test)}
        recalibrate_batchnorm(model, calib)
        row.update(val_bn=evaluate(model, splits.val), test_bn=evaluate(model, splits.test))
        tuned = _finetune(model, splits, cfg, seed)
        row.update(val_ft=evaluate(tuned, splits.val), test_ft=evaluate(tuned, splits.test))
        rows.append(row)
    return rows


def _ablations(cfg, arch, seed, base, splits, calib, results, done) -> None:
    # the default configuration runs once per criterion and ranking mode (options {}), alternatives one at a time
    jobs = [(m, c, {}) for c in ABLATIONS for m in ("local", "global")]
    jobs += [("local", c, {o: v}) for c, opts in ABLATIONS.items() for o, vs in opts.items() for v in vs[1:]]
    jobs += [("global", c, {"normalizer": n}) for c, ns in NORMALIZERS.items() for n in ns[1:]]
    jobs = [(_key("ablation", arch, seed, m, c, json.dumps(o)), (m, c, o)) for m, c, o in jobs]
    # which value was the default when the {} runs were made: the report labels decisions with it
    _record(results, done, {"kind": "plan", "arch": arch, "seed": seed, "ablations": ABLATIONS,
                            "normalizers": NORMALIZERS})
    for key, (mode, criterion, options) in tqdm(jobs, desc=f"ablations {arch} seed {seed}", unit="run"):
        if key in done:
            continue
        target = min(cfg.speed_ups)
        row = {"kind": "ablation", "arch": arch, "seed": seed, "mode": mode, "criterion": criterion,
               "options": options, "target": target, "n_val": len(splits.val)}
        try:
            _, reached, model, _ = next(progressive(base, criterion, calib, [target], mode == "global", cfg.steps,
                                                    seed, **options))
            row["speed_up"], row["val_no_ft"] = reached, evaluate(model, splits.val)
            row["val"] = evaluate(recalibrate_batchnorm(model, calib), splits.val)
        except Exception as e:  # noqa: BLE001 - recorded; the option then cannot win
            row["error"] = f"{type(e).__name__}: {e}"
        _record(results, done, row)


def _key(*parts) -> str:
    return "|".join(str(p) for p in parts)


def _row_key(row: dict) -> str:
    if row["kind"] == "base":
        return _key("base", row["arch"], row["seed"])
    if row["kind"] == "session":
        return _key("session", row["at"])
    if row["kind"] == "plan":
        return _key("plan", row["arch"], row["seed"])
    if row["kind"] == "prune":
        return _key("prune", row["arch"], row["seed"], row["mode"], row["criterion"])
    return _key("ablation", row["arch"], row["seed"], row["mode"], row["criterion"], json.dumps(row["options"]))


def _done_keys(results: Path) -> set[str]:
    if not results.exists():
        return set()
    return {_row_key(json.loads(line)) for line in results.read_text().splitlines() if line.strip()}


def _record(results: Path, done: set[str], row: dict) -> None:
    key = _row_key(row)
    if row["kind"] in ("base", "plan") and key in done:
        return
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a") as f:
        f.write(json.dumps(row) + "\n")
    done.add(key)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="ResNet-56 only, 1 seed, 20k training images, 2 epochs, "
                                                        "2000 val / 2000 test images, 25 pruning steps, "
                                                        "4000-image fine-tune")
    p.add_argument("--archs", nargs="*", default=None, choices=["resnet56", "vgg16"])
    p.add_argument("--seeds", nargs="*", type=int, default=None)
    p.add_argument("--results", default=None, help="JSON-lines results (default: runs/compare-{quick,full}.jsonl)")
    p.add_argument("--cache", default="runs/checkpoints", help="where trained base networks are cached")
    p.add_argument("--docs", default="docs", help="where benchmarks.md / .json / _accuracy.png are written")
    p.add_argument("--report", action="store_true", help="only rewrite the report from the results file")
    args = p.parse_args(argv)

    cfg = copy.deepcopy(QUICK if args.quick else FULL)
    cfg.archs = args.archs or cfg.archs
    cfg.seeds = args.seeds if args.seeds is not None else cfg.seeds
    name = "quick" if args.quick else "full"
    results = Path(args.results or f"runs/compare-{name}.jsonl")
    t = time.perf_counter()
    if not args.report:
        run_grid(cfg, results, Path(args.cache))
        _record(results, set(), {"kind": "session", "seconds": time.perf_counter() - t, "at": time.time()})
    command = "python -m benchmarks.compare " + " ".join(argv if argv is not None else sys.argv[1:])
    write_report(results, Path(args.docs), asdict(cfg), command.strip(), ABLATIONS, NORMALIZERS)


if __name__ == "__main__":
    main()
