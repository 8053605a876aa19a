"""Which criterion gives the better pruned network: every criterion of ours and Torch-Pruning's built-ins, on
real data, several base seeds, paired differences with 95 % intervals.

    python -m benchmarks.quality --measure            # one base epoch per architecture, timed (the sizing)
    python -m benchmarks.quality --jobs 2             # the full run (resumes from docs/quality.jsonl)
    python -m benchmarks.quality --report             # only rewrite docs/quality.md and its plots from the rows
    python -m benchmarks.quality --quick              # the miniature: rows and report under runs/quality/quick/

Bases: three networks for native 1x28x28 Fashion-MNIST (``recipes.fmnist_models``: VGG-style, ResNet-20 style,
MobileNetV2 style), each trained from ``--seeds`` (default 0 1 2) through the one training loop
(``recipes.trainer.fit``: SGD, Nesterov momentum, one-cycle schedule, horizontal flips) on the training images
minus a validation split of 5000 held out with a fixed seed; checkpoints are cached under ``--cache``
(default ``benchmarks/quality_bases``, kept in git: each checkpoint is under 1.2 MB, and a run split across sessions
or machines must pair every method of a seed with the same base, which retraining would not guarantee).

Cells: each method (``--methods``; ours and Torch-Pruning's L1, L2, FPGM, LAMP, Taylor, random) in two modes at
each MAC target (2x, 3x): ``local`` prunes every group by one uniform ratio, found once per architecture with
Torch-Pruning's L2 on a freshly initialised network of it (a local prune's widths do not depend on the weights) and
reused for every method and seed, so that only the choice of channels differs; ``global`` is
``prune(speed_up=target, global_pruning=True)``. Every method of a base gets the same calibration images (a seeded
sample of training images, ``calibration_images``) and the same fine-tune images and order.

Regimes, each measured on the test set (all 10 000 images in the full run): ``none`` (as pruned); ``bn``
(BatchNorm statistics re-estimated on the calibration images: ``entropy_importance.recover(method="bn")`` when the
package has it, the benchmark's own re-estimation before); ``reconstruct`` (``recover(method="reconstruct")``);
``reconstruct+ft`` (that, then the short fine-tune); ``ft`` (the short fine-tune: ``finetune_images`` training
images once, cosine from ``finetune_lr``); ``ft-long`` (one epoch of the training split; only when asked with
``--regimes``). Without ``entropy_importance.recover`` the two reconstruct regimes are skipped (a session row says
so) and a later run fills them in. Nothing is chosen on the test set: the schedules are fixed in :data:`FULL`, and
the report compares at the end of each schedule.

Rows (one JSON line per (arch, seed, method, mode, target, regime), appended and flushed one at a time, several
worker processes appending under a file lock): the run skips every row it finds, so it can be stopped and started
again; ``--archs`` / ``--seeds`` / ``--methods`` / ``--modes`` / ``--regimes`` run a slice. The report
(``benchmarks.quality_report``) is written from the rows after every run.
"""

from __future__ import annotations

import argparse
import copy
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

import entropy_importance as ei
from entropy_importance.engine import count_params, tp_macs
from entropy_importance.serialization import atomic_write
from recipes.fmnist_models import FMNIST_MODELS
from recipes.trainer import Runtime
from recipes.training import Split, Splits, batches, evaluate, load_splits, recalibrate_batchnorm, train

ROOT = Path(__file__).resolve().parents[1]
OURS = ei.list_importances(source="entropy-importance")
BUILTINS = ["tp-magnitude-l1", "tp-magnitude-l2", "tp-fpgm", "tp-lamp", "tp-taylor", "tp-random"]
REGIMES = ("none", "bn", "reconstruct", "reconstruct+ft", "ft", "ft-long")
DEFAULT_REGIMES = ("none", "bn", "reconstruct", "reconstruct+ft", "ft")
NEEDS_RECOVER = ("reconstruct", "reconstruct+ft")
MODES = ("local", "global")
#: the options that choose which rows to run, not what a row means
SLICES = ("name", "archs", "seeds", "modes", "methods", "regimes")
#: evaluation batch: on one CPU thread 100 images a batch took 0.6-0.8x the time of 1000 (cache-sized activations)
EVAL_BATCH = 100
#: the methods the sizing measures a whole cell with (one data-free local, one data-driven global)
TIMED_CELLS = (("local", "tp-magnitude-l2"), ("global", "gap-entropy"))
#: what the numbers depend on besides this configuration: the code of these files (rows of other code are marked)
CODE_PATHS = ("entropy_importance", "benchmarks/quality.py", "benchmarks/quality_stats.py", "recipes/trainer.py",
              "recipes/training.py", "recipes/fmnist_models.py", "recipes/cifar_models.py")
#: parts of those paths the benchmark never runs (the command line): editing them does not mark rows as other code
NOT_RUN = ("entropy_importance/cli",)


@dataclass(frozen=True)
class Config:
    name: str
    archs: tuple[str, ...] = ("vgg", "resnet20", "mobilenetv2")
    width: float = 1.0
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: float = 6.0
    lr: float = 0.1
    batch_size: int = 128
    weight_decay: float = 5e-4
    train_limit: int | None = None
    val_limit: int | None = None
    test_limit: int | None = None
    targets: tuple[float, ...] = (2.0, 3.0)
    modes: tuple[str, ...] = MODES
    methods: tuple[str, ...] = tuple(OURS + BUILTINS)
    regimes: tuple[str, ...] = DEFAULT_REGIMES
    #: held-out validation images every pruned network is also measured on (the report picks the reference
    #: built-in of a setting by them, never by the test set)
    cell_val_images: int = 1000
    calibration_images: int = 1024
    calibration_batch_size: int = 128
    finetune_images: int = 4096
    finetune_lr: float = 0.01
    finetune_long_epochs: float = 1.0
    recover_method: str = "reconstruct"

    def setup(self) -> dict:
        """What a row's number depends on (the slices are not part of it)."""
        return {k: v for k, v in asdict(self).items() if k not in SLICES}

    def setup_id(self) -> str:
        return hashlib.sha1(json.dumps(self.setup(), sort_keys=True).encode()).hexdigest()[:10]

    def base_id(self, arch: str) -> str:
        keys = ("width", "epochs", "lr", "batch_size", "weight_decay", "train_limit")
        return hashlib.sha1(json.dumps([arch] + [getattr(self, k) for k in keys]).encode()).hexdigest()[:10]


FULL = Config("full")
QUICK = Config("quick", archs=("resnet20",), width=0.5, seeds=(0,), epochs=4.0, batch_size=64, train_limit=2048,
               val_limit=512, test_limit=500, cell_val_images=256, calibration_images=128, calibration_batch_size=64,
               finetune_images=512, finetune_long_epochs=0.5, regimes=REGIMES)


# ------------------------------------------------------------------------------------------------ rows
def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill: that row is run again
                continue
    return rows


def append_row(path: Path, row: dict) -> None:
    """One line, written and flushed under an exclusive lock (several worker processes append to one file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(row) + "\n"
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def row_key(row: dict) -> tuple | None:
    kind = row.get("kind")
    if kind == "cell":
        return ("cell", row["setup"], row["arch"], row["seed"], row["method"], row["mode"], row["target"],
                row["regime"])
    if kind == "base":
        return ("base", row["setup_base"], row["arch"], row["seed"])
    if kind == "ratio":
        return ("ratio", row["setup_base"], row["arch"], row["target"])
    return None


def done_keys(rows: list[dict]) -> set[tuple]:
    return {k for k in map(row_key, rows) if k is not None}


@lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of the source files the numbers depend on (:data:`CODE_PATHS`)."""
    h = hashlib.sha1()
    for top in CODE_PATHS:
        p = ROOT / top
        files = sorted(p.rglob("*.py")) if p.is_dir() else [p]
        for f in files:
            if str(f.relative_to(ROOT)).startswith(NOT_RUN):
                continue
            if f.exists():
                h.update(str(f.relative_to(ROOT)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:12]


@lru_cache(maxsize=1)
def provenance() -> dict:
    from importlib.metadata import version  # Torch-Pruning 1.6.1 says __version__ 1.6.0

    import timm

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"versions": {"torch": torch.__version__, "torch-pruning": version("torch-pruning"),
                         "timm": timm.__version__, "entropy-importance": ei.__version__},
            "commit": git("rev-parse", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--", *CODE_PATHS, *(f":!{p}" for p in NOT_RUN))),
            "code": code_version()}


def recover_function() -> Callable | None:
    """``entropy_importance.recover`` when the package has it (looked up at run time, not at import)."""
    return getattr(ei, "recover", None)


# ------------------------------------------------------------------------------------------------ context
@dataclass
class Context:
    """What one worker process needs: the configuration, where rows and checkpoints go, the device, the data."""

    cfg: Config
    rows: Path
    cache: Path
    device: str
    threads: int
    quiet: bool = True
    _splits: Splits | None = None

    def __getstate__(self) -> dict:  # sent to worker processes without the data: each loads its own
        return {**self.__dict__, "_splits": None}

    @property
    def runtime(self) -> Runtime:
        """Where base networks train (a progress bar unless quiet)."""
        return Runtime(torch.device(self.device), quiet=self.quiet)

    @property
    def silent(self) -> Runtime:
        """Where the cells fine-tune and everything is evaluated (no progress bars)."""
        return Runtime(torch.device(self.device), quiet=True)

    @property
    def splits(self) -> Splits:
        if self._splits is None:
            c = self.cfg
            self._splits = load_splits(train_limit=c.train_limit, val_limit=c.val_limit, test_limit=c.test_limit,
                                       size=28, channels=1)
        return self._splits

    def stamp(self, row: dict) -> dict:
        return {**row, **provenance(), "config": self.cfg.name, "setup": self.cfg.setup_id(),
                "device": self.device if self.device != "cuda" else f"cuda ({torch.cuda.get_device_name()})",
                "threads": torch.get_num_threads(), "at": time.time()}

    def calibration(self, seed: int) -> list:
        """The seed's calibration batches (training images, never validation ones), on the device."""
        c = self.cfg
        part = self.splits.train.sample(c.calibration_images, 10_000 + seed)
        return [(x.to(self.device), y.to(self.device)) for x, y in batches(part, c.calibration_batch_size)]

    def finetune_split(self, seed: int) -> Split:
        return self.splits.train.sample(self.cfg.finetune_images, 20_000 + seed)

    def test(self, model: nn.Module) -> float:
        return evaluate(model, self.splits.test, EVAL_BATCH, self.silent)

    def val(self, model: nn.Module) -> float:
        """Top-1 on the first ``cell_val_images`` of the held-out validation split."""
        return evaluate(model, self.splits.val.head(self.cfg.cell_val_images), EVAL_BATCH, self.silent)


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _new_model(cfg: Config, arch: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return FMNIST_MODELS[arch](10, cfg.width)


def base_path(ctx: Context, arch: str, seed: int) -> Path:
    return ctx.cache / f"{arch}-seed{seed}-{ctx.cfg.base_id(arch)}.pt"


def _example(device: str) -> torch.Tensor:
    return torch.zeros(1, 1, 28, 28, device=device)


# ------------------------------------------------------------------------------------------------ local ratios
def local_ratios(ctx: Context, rows: list[dict]) -> dict[tuple[str, float], float]:
    """The uniform ratio reaching each target, per architecture: Torch-Pruning's L2 on a freshly initialised
    network (local widths do not depend on the weights); recorded once, then read back."""
    found = {(r["arch"], r["target"]): r["ratio"] for r in rows
             if r.get("kind") == "ratio" and r["setup_base"] == ctx.cfg.base_id(r["arch"])}
    for arch in ctx.cfg.archs:
        for target in ctx.cfg.targets:
            if (arch, target) in found:
                continue
            model = _new_model(ctx.cfg, arch, 0).to(ctx.device).eval()
            engine = ei.Engine(model, _example(ctx.device), "tp-magnitude-l2", heads="last")
            ratio, work, _ = engine.search_ratio(target)
            reached = engine.macs_before / tp_macs(work, _example(ctx.device))
            append_row(ctx.rows, ctx.stamp({"kind": "ratio", "setup_base": ctx.cfg.base_id(arch), "arch": arch,
                                            "target": target, "ratio": ratio, "reached": reached}))
            found[(arch, target)] = ratio
    return found


# ------------------------------------------------------------------------------------------------ bases
def base_model(ctx: Context, arch: str, seed: int, log: Callable[[str], None] = print) -> nn.Module:
    """The cached base network (trained now if it is not cached); its row is written once."""
    cfg, path = ctx.cfg, base_path(ctx, arch, seed)
    model = _new_model(cfg, arch, seed)
    key = ("base", cfg.base_id(arch), arch, seed)
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        model.to(ctx.device).eval()
        if key in done_keys(read_rows(ctx.rows)):
            return model
        seconds = cpu_seconds = None
    else:
        log(f"[{arch} seed {seed}] training the base ({cfg.epochs:g} epochs)")
        t0, c0 = time.perf_counter(), time.process_time()
        train(model, ctx.splits.train, cfg.epochs, cfg.lr, seed, cfg.batch_size, cfg.weight_decay,
              desc=f"{arch} seed {seed}", runtime=ctx.runtime)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        ctx.cache.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: torch.save(model.state_dict(), f))
    top1, val = ctx.test(model), evaluate(model, ctx.splits.val, EVAL_BATCH, ctx.silent)
    old = next((r for r in read_rows(ctx.rows) if row_key(r) == key), None)
    if old is not None:
        if abs(old["top1"] - top1) > 1e-9:
            log(f"[{arch} seed {seed}] warning: the base was trained again and now scores {top1:.2f} "
                f"(its row says {old['top1']:.2f}); the row is kept")
        return model
    append_row(ctx.rows, ctx.stamp({
        "kind": "base", "setup_base": cfg.base_id(arch), "arch": arch, "seed": seed, "width": cfg.width,
        "epochs": cfg.epochs, "top1": top1, "val_top1": val, "params": count_params(model),
        "macs": tp_macs(model, _example(ctx.device)), "train_images": len(ctx.splits.train),
        "n_test": len(ctx.splits.test), "n_val": len(ctx.splits.val), "seconds": seconds,
        "cpu_seconds": cpu_seconds}))
    log(f"[{arch} seed {seed}] base: test {top1:.2f} %, validation {val:.2f} %")
    return model


def _base_unit(ctx: Context, arch: str, seed: int) -> str:
    torch.set_num_threads(ctx.threads)
    base_model(ctx, arch, seed)
    return f"{arch} seed {seed}"


# ------------------------------------------------------------------------------------------------ cells
def _stable_seed(*parts: Any) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode())


def _prune(ctx: Context, base: nn.Module, calib: list, arch: str, seed: int, mode: str, target: float,
           method: str, ratio: float | None):
    torch.manual_seed(_stable_seed(arch, seed, mode, target, method))  # Torch-Pruning's random criterion
    common = dict(calibration_data=calib, heads="last")
    if mode == "local":
        return ei.prune(base, _example(ctx.device), method, ratio=ratio, **common)
    return ei.prune(base, _example(ctx.device), method, speed_up=target, global_pruning=True, **common)


def run_cell(ctx: Context, base: nn.Module, base_row: dict, arch: str, seed: int, mode: str, target: float,
             method: str, regimes: list[str], ratio: float | None, calib: list, sink: Callable[[dict], None]
             ) -> dict[str, float | None]:
    """Prune ``base`` once and measure each of ``regimes``; each row goes to ``sink`` as soon as it is measured."""
    cfg = ctx.cfg
    recover = recover_function()
    head = {"kind": "cell", "arch": arch, "seed": seed, "method": method, "mode": mode, "target": target,
            "base_top1": base_row["top1"], "n_test": len(ctx.splits.test),
            "n_val": len(ctx.splits.val.head(cfg.cell_val_images))}
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        pruned, report = _prune(ctx, base, calib, arch, seed, mode, target, method, ratio)
    except Exception as e:  # noqa: BLE001 - a method that cannot prune is a result, not the end of the run
        for regime in regimes:
            sink({**head, "regime": regime, "top1": None, "error": f"prune: {type(e).__name__}: {e}"[:300],
                  "seconds": time.perf_counter() - t0})
        return dict.fromkeys(regimes)
    head.update(prune_seconds=time.perf_counter() - t0, prune_cpu_seconds=time.process_time() - c0,
                ratio=report.ratio,
                macs_ratio=report.macs_after / report.macs_before, params_ratio=report.params_after /
                report.params_before, speed_up=report.macs_before / report.macs_after)
    runtime, tuned_seed = ctx.silent, seed + 1
    made: dict[str, tuple[nn.Module, dict]] = {}

    def finetune(model: nn.Module, split: Split, epochs: float) -> nn.Module:
        return train(copy.deepcopy(model), split, epochs, cfg.finetune_lr, tuned_seed, cfg.batch_size,
                     cfg.weight_decay, warmup=False, desc="fine-tune", runtime=runtime)

    def make(regime: str) -> tuple[nn.Module, dict]:
        if regime in made:
            return made[regime]
        if regime == "none":
            out = pruned, {}
        elif regime == "bn":
            if recover is not None:
                model, rep = recover(base, pruned, calib, method="bn")
                out = model, {"bn": "recover", "recover_seconds": rep.seconds}
            else:
                out = recalibrate_batchnorm(copy.deepcopy(pruned), calib), {"bn": "benchmark"}
        elif regime == "reconstruct":
            model, rep = recover(base, pruned, calib, method=cfg.recover_method)
            out = model, {"recover_method": cfg.recover_method, "recover_seconds": rep.seconds}
        elif regime == "reconstruct+ft":
            model, extra = make("reconstruct")
            out = finetune(model, ctx.finetune_split(seed), 1.0), {**extra, "finetune_images": cfg.finetune_images}
        elif regime == "ft":
            out = finetune(pruned, ctx.finetune_split(seed), 1.0), {"finetune_images": cfg.finetune_images}
        elif regime == "ft-long":
            out = finetune(pruned, ctx.splits.train, cfg.finetune_long_epochs), {
                "finetune_images": int(cfg.finetune_long_epochs * len(ctx.splits.train))}
        else:
            raise ValueError(f"unknown regime {regime!r}")
        made[regime] = out
        return out

    results: dict[str, float | None] = {}
    for regime in regimes:
        t, c = time.perf_counter(), time.process_time()
        try:
            model, extra = make(regime)
            top1 = ctx.test(model)
            row = {**head, "regime": regime, "top1": top1, "val_top1": ctx.val(model), **extra}
        except Exception as e:  # noqa: BLE001 - recorded; the other regimes still run
            top1 = None
            row = {**head, "regime": regime, "top1": None, "error": f"{type(e).__name__}: {e}"[:300]}
        row["seconds"], row["cpu_seconds"] = time.perf_counter() - t, time.process_time() - c
        results[regime] = top1
        sink(row)
    return results


def runnable_regimes(regimes: tuple[str, ...]) -> list[str]:
    return [r for r in regimes if r not in NEEDS_RECOVER or recover_function() is not None]


def pending_cells(cfg: Config, done: set[tuple], arch: str, seed: int, mode: str) -> list[tuple[float, str, list]]:
    out = []
    for target in cfg.targets:
        for method in cfg.methods:
            todo = [r for r in runnable_regimes(cfg.regimes)
                    if ("cell", cfg.setup_id(), arch, seed, method, mode, target, r) not in done]
            if todo:
                out.append((target, method, todo))
    return out


def _cell_unit(ctx: Context, arch: str, seed: int, mode: str, ratios: dict) -> str:
    torch.set_num_threads(ctx.threads)
    rows = read_rows(ctx.rows)
    todo = pending_cells(ctx.cfg, done_keys(rows), arch, seed, mode)
    if not todo:
        return f"{arch} seed {seed} {mode}: nothing to do"
    base = base_model(ctx, arch, seed)
    base_row = next(r for r in read_rows(ctx.rows) if row_key(r) == ("base", ctx.cfg.base_id(arch), arch, seed))
    calib = ctx.calibration(seed)
    for target, method, regimes in todo:
        t = time.perf_counter()
        out = run_cell(ctx, base, base_row, arch, seed, mode, target, method, regimes,
                       ratios[(arch, target)] if mode == "local" else None, calib,
                       lambda row: append_row(ctx.rows, ctx.stamp(row)))
        shown = "  ".join(f"{r} {'error' if v is None else f'{v:.2f}'}" for r, v in out.items())
        print(f"[{arch} s{seed} {mode} {target:g}x {method}] {shown}  ({time.perf_counter() - t:.0f} s)", flush=True)
    return f"{arch} seed {seed} {mode}: {len(todo)} cells"


def run_units(fn: Callable, units: list[tuple], jobs: int) -> None:
    if not units:
        return
    if jobs <= 1:
        for unit in units:
            print(fn(*unit), flush=True)
        return
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(units[0][0].threads,)) as pool:
        for done in pool.map(fn, *zip(*units, strict=True)):
            print(done, flush=True)


#: slowest architecture first, so that two workers finish close together
_COST_ORDER = {"mobilenetv2": 0, "resnet20": 1, "vgg": 2}


def run(ctx: Context, jobs: int = 1) -> None:
    cfg = ctx.cfg
    t0 = time.perf_counter()
    recover = recover_function() is not None
    if not recover and set(cfg.regimes) & set(NEEDS_RECOVER):
        print("entropy_importance.recover is not available: the reconstruct regimes are skipped (a later run "
              "fills them in)", flush=True)
    ratios = local_ratios(ctx, read_rows(ctx.rows)) if "local" in cfg.modes else {}
    archs = sorted(cfg.archs, key=lambda a: _COST_ORDER.get(a, 9))
    done = done_keys(read_rows(ctx.rows))
    # seed-major: a run stopped part-way leaves whole seeds of every architecture, not whole architectures
    bases = [(ctx, a, s) for s in cfg.seeds for a in archs
             if not base_path(ctx, a, s).exists() or ("base", cfg.base_id(a), a, s) not in done]
    run_units(_base_unit, bases, jobs)
    done = done_keys(read_rows(ctx.rows))
    units = [(ctx, a, s, m, ratios) for s in cfg.seeds for a in archs for m in cfg.modes
             if pending_cells(cfg, done, a, s, m)]
    run_units(_cell_unit, units, jobs)
    append_row(ctx.rows, ctx.stamp({"kind": "session", "seconds": time.perf_counter() - t0, "jobs": jobs,
                                    "recover_available": recover,
                                    "slice": {k: list(getattr(cfg, k)) for k in SLICES if k != "name"}}))


# ------------------------------------------------------------------------------------------------ sizing
def measure(ctx: Context) -> None:
    """One base epoch per architecture of the configuration (timed, with the worker's thread count), its test and
    validation accuracy after that one-epoch schedule, one test-set evaluation, and two whole cells on it
    (:data:`TIMED_CELLS` at the first target, every default regime that can run): the numbers the report sizes the
    full run with. Rows of kind ``timing``, with wall seconds and the process's CPU seconds (on one thread, what an
    idle core would take: other load on a shared machine stretches the first, hardly the second)."""
    cfg = ctx.cfg
    torch.set_num_threads(ctx.threads)
    for arch in cfg.archs:
        model = _new_model(cfg, arch, 0)
        t0, c0 = time.perf_counter(), time.process_time()
        train(model, ctx.splits.train, 1.0, cfg.lr, 0, cfg.batch_size, cfg.weight_decay, desc=f"{arch} 1 epoch",
              runtime=ctx.runtime)
        epoch_s, epoch_cpu = time.perf_counter() - t0, time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        top1 = ctx.test(model)
        eval_s, eval_cpu = time.perf_counter() - t0, time.process_time() - c0
        val = evaluate(model, ctx.splits.val, EVAL_BATCH, ctx.silent)
        calib = ctx.calibration(0)
        ratios = {} if "local" not in cfg.modes else local_ratios(ctx, read_rows(ctx.rows))
        samples = []
        for mode, method in TIMED_CELLS:
            rows: list[dict] = []
            run_cell(ctx, model, {"top1": top1}, arch, 0, mode, cfg.targets[0], method,
                     runnable_regimes(DEFAULT_REGIMES), ratios.get((arch, cfg.targets[0])), calib, rows.append)
            samples.append({"mode": mode, "method": method, "target": cfg.targets[0],
                            "prune_seconds": rows[0].get("prune_seconds"),
                            "prune_cpu_seconds": rows[0].get("prune_cpu_seconds"),
                            "regime_seconds": {r["regime"]: r["seconds"] for r in rows},
                            "regime_cpu_seconds": {r["regime"]: r.get("cpu_seconds") for r in rows},
                            "errors": {r["regime"]: r["error"] for r in rows if "error" in r},
                            "val_images": cfg.cell_val_images})
        row = {"kind": "timing", "arch": arch, "width": cfg.width, "epoch_seconds": epoch_s,
               "epoch_cpu_seconds": epoch_cpu, "eval_cpu_seconds": eval_cpu,
               "steps": len(ctx.splits.train) // cfg.batch_size, "train_images": len(ctx.splits.train),
               "batch_size": cfg.batch_size, "eval_seconds": eval_s, "n_test": len(ctx.splits.test),
               "top1_one_epoch": top1, "val_top1_one_epoch": val, "params": count_params(model),
               "macs": tp_macs(model, _example(ctx.device)), "cells": samples}
        append_row(ctx.rows, ctx.stamp(row))
        cells = [round(sum(s["regime_cpu_seconds"].values()) + (s["prune_cpu_seconds"] or 0), 1) for s in samples]
        print(f"[{arch}] one epoch {epoch_s:.1f} s wall, {epoch_cpu:.1f} s CPU on {torch.get_num_threads()} "
              f"thread(s); test {top1:.2f} % after it; test-set evaluation {eval_cpu:.1f} s CPU; cells {cells} s CPU",
              flush=True)


# ------------------------------------------------------------------------------------------------ command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the miniature: one narrow ResNet-20 (width 0.5), one seed, "
                   "2048 training / 500 test images, every method, mode, target and regime, two workers (minutes on "
                   "2 cores)")
    p.add_argument("--archs", nargs="+", choices=sorted(FMNIST_MODELS), help="a slice: these architectures")
    p.add_argument("--seeds", nargs="+", type=int, help="a slice: these base seeds")
    p.add_argument("--methods", nargs="+", choices=OURS + BUILTINS, help="a slice: these methods")
    p.add_argument("--modes", nargs="+", choices=MODES, help="a slice: these ranking modes")
    p.add_argument("--regimes", nargs="+", choices=REGIMES, help="a slice: these regimes (ft-long only when named)")
    p.add_argument("--rows", type=Path, help="the JSON-lines rows (default docs/quality.jsonl; quick: "
                   "runs/quality/quick/quality.jsonl)")
    p.add_argument("--out", type=Path, help="the folder of the report page and plots (default docs/; quick: the "
                   "rows' folder)")
    p.add_argument("--cache", type=Path, help="base checkpoints (default benchmarks/quality_bases, kept in git: "
                   "a run split across sessions and machines must pair every method with the same bases; quick: "
                   "runs/quality/quick)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (recorded in every row)")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (CPU; one base or (base, mode) at a time "
                   "each; default 1, --quick 2)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per worker (default: 1 with --jobs > 1, else torch's default)")
    p.add_argument("--measure", action="store_true", help="time one base epoch (and two cells) per architecture for "
                   "the sizing; writes timing rows")
    p.add_argument("--report", action="store_true", help="only rewrite the report from the rows")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cfg = QUICK if args.quick else FULL
    for name in ("archs", "seeds", "methods", "modes", "regimes"):
        if getattr(args, name):
            cfg = replace(cfg, **{name: tuple(getattr(args, name))})
    if args.jobs is None:
        args.jobs = 2 if args.quick else 1
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print("--device cuda: this machine has no CUDA device", file=sys.stderr)
            return 2
        args.jobs = 1
    rows = args.rows or (Path("runs/quality/quick/quality.jsonl") if args.quick else Path("docs/quality.jsonl"))
    out = args.out or (rows.parent if args.quick else Path("docs"))
    threads = args.threads or (1 if args.jobs > 1 else torch.get_num_threads())
    torch.set_num_threads(threads)
    cache = args.cache or (Path("runs/quality/quick") if args.quick else ROOT / "benchmarks" / "quality_bases")
    ctx = Context(cfg, rows, cache, args.device, threads, quiet=args.jobs > 1)
    if args.measure:
        measure(ctx)
    elif not args.report:
        run(ctx, args.jobs)
    from .quality_report import write_report

    page = write_report(read_rows(rows), QUICK if args.quick else FULL, out, rows,
                        "python -m benchmarks.quality" + (" --quick" if args.quick else ""), code_version())
    print(f"report: {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
