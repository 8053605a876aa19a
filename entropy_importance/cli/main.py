"""``entropy-prune``: prune a timm / torchvision model (or a saved pruned model) with one criterion, and measure
what it gained (params, MACs, latency)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
from tqdm import tqdm

from .. import __version__
from ..criteria.registry import get_importance_info, list_importances
from ..engine import count_macs, count_params, prune, stage_widths
from ..messages import first_line
from ..serialization import atomic_write, pruning_record, save_pruned
from .arguments import CLIError, build_parser
from .checks import validate
from .inputs import load_calibration, load_model
from .report import print_report
from .timing import measure

__all__ = ["main", "run"]


class _ProgressBatches:
    """Calibration batches that draw a tqdm bar each time the criterion reads them (re-iterable)."""

    def __init__(self, batches: list, enabled: bool) -> None:
        self.batches, self.enabled = batches, enabled

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator:
        return iter(tqdm(self.batches, desc="calibration", unit="batch", leave=False, file=sys.stderr,
                         disable=not self.enabled))


@contextmanager
def _stage(bar: tqdm, timings: dict[str, float], key: str, label: str) -> Iterator[None]:
    bar.set_postfix_str(label)
    t = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - t
    bar.update()


def _summary(model: nn.Module, x: torch.Tensor) -> dict:
    return {"params": count_params(model), "macs": count_macs(model, x), "widths": stage_widths(model, x)}


def run(args: argparse.Namespace) -> dict:
    """Prune as ``args`` say and return the report (also written to ``--json``). Raises :class:`CLIError`."""
    plan = validate(args)
    source = plan.data
    t0 = time.perf_counter()
    loaded = load_model(args, plan)
    criterion = get_importance_info(args.criterion)
    progress = not args.quiet and sys.stderr.isatty()  # bars only on a terminal
    recover = None if args.recover == "none" else args.recover
    data = load_calibration(args, source, loaded, progress) if criterion.needs_data or recover else None
    model = loaded.model.to(args.device)
    x = torch.randn(1, *loaded.input_size, device=args.device)
    timings: dict[str, float] = {}
    stages = 3 if plan.latency is None else 4
    with tqdm(total=stages, desc="entropy-prune", unit="stage", file=sys.stderr, disable=not progress) as bar:
        with _stage(bar, timings, "count_before_s", "counting (before)"):
            before = _summary(model, x)
        with _stage(bar, timings, "prune_s", "pruning"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                pruned, result = prune(model, x, args.criterion, ratio=args.ratio, speed_up=args.speed_up,
                                       global_pruning=args.global_pruning, round_to=args.round_to,
                                       calibration_data=None if data is None else _ProgressBatches(data, progress),
                                       recover=recover, recover_options={"progress": progress} if recover else None)
            except (ValueError, TypeError) as e:
                raise CLIError(first_line(e)) from None
        with _stage(bar, timings, "count_after_s", "counting (after)"):
            after = _summary(pruned, x)
        latency = None
        if plan.latency is not None:
            with _stage(bar, timings, "latency_s", "latency"):
                latency = measure(plan.latency, args.device, args.onnx, {"before": model, "after": pruned},
                                  loaded.input_size)
    meta = {"random_weights": loaded.weights == "random", "weights": loaded.weights, "criterion": args.criterion,
            "ratio": result.ratio, "speed_up_target": args.speed_up, "global_pruning": args.global_pruning,
            "entropy_importance": __version__}
    if args.out:
        save_pruned(args.out, pruned.cpu(), meta)
    timings["total_s"] = time.perf_counter() - t0
    record = pruning_record(pruned)
    report = {
        "model": args.model, "base_spec": record.base.spec if record.base else None, "criterion": args.criterion,
        "ratio": result.ratio, "speed_up_target": args.speed_up, "speed_up": result.speed_up,
        "global_pruning": args.global_pruning, "round_to": args.round_to, "input_size": list(loaded.input_size),
        "weights": loaded.weights, "random_weights": loaded.weights == "random", "device": args.device,
        "data": str(source) if data is not None else None,
        "calibration_images": sum(len(y) for _, y in data) if data is not None else 0,
        "before": before, "after": after, "latency": latency, "kept_unpruned": result.kept_unpruned,
        "recovery": None if result.recovery is None else result.recovery.summary(),
        "timings": timings, "out": args.out,
    }
    if args.json:
        atomic_write(args.json, lambda f: f.write(json.dumps(report, indent=2).encode()))
    return report


def _list_criteria() -> None:
    for name in list_importances():
        info = get_importance_info(name)
        needs = "labels" if info.needs_labels else "images" if info.needs_data else "data-free"
        print(f"{name:30s}{needs:12s}{info.paper}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_criteria:
        _list_criteria()
        return 0
    try:
        report = run(args)
    except CLIError as e:
        print(f"entropy-prune: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # the model could not be pruned as asked
        print(f"entropy-prune: error: {first_line(e)}", file=sys.stderr)
        return 1
    print_report(report)
    return 0
