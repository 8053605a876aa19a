"""``prune()`` against a plain Torch-Pruning prune of the same model at the same ratio, on the curated model list
(``benchmarks/curated.py``, the list tests/test_models.py tests).

    OMP_NUM_THREADS=1 python -m benchmarks.prune_overhead [--repeats 3] [--models timm:resnet18 ...] \
        [--out table.md] [--jsonl rows.jsonl]

For each model and repeat, interleaved, each on a fresh copy of the seeded random-weight model:

* ``plain``: ``tp.pruner.MetaPruner(model, x, MagnitudeImportance(p=2), pruning_ratio=0.5,
  ignored_layers=<task heads>, num_heads=<fused-qkv attention heads>)`` built and stepped: what a Torch-Pruning
  user runs;
* ``prune(l2)``: ``entropy_importance.prune(model, x, "tp-magnitude-l2", ratio=0.5)``, the same criterion through our
  engine (copy, heads, attention, forward checks, repairs, the report's counts): the engine's own overhead;
* ``prune(default)``: ``prune()`` with the package's default criterion (``channel-similarity-entropy``): what the user
  waits for with ours.

Times are CPU seconds of this process (``--clock cpu``, robust to other load on a shared machine; with one torch
thread they equal wall time on an idle machine), fastest of ``--repeats``. A model counts when both sides handle it:
plain Torch-Pruning raises nothing and the pruned model still runs. The target: ``prune(l2)`` <= 2x plain (the
engine's overhead; ``prune(default)`` adds what our criterion costs over the magnitude). The table's first line says
when, with which versions and with which code (the commit, and whether the package had uncommitted changes) it was
measured.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import time
import warnings
from importlib import metadata
from pathlib import Path

import torch
import torch_pruning as tp

from entropy_importance import prune
from entropy_importance.engine import attention_num_heads, forward, task_heads

from .curated import CURATED_MODELS, build_curated

CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
#: models on which plain Torch-Pruning 1.6 does not finish forming its groups (the repairs' group search does)
PLAIN_NEVER_FINISHES = {"timm:rexnet_100": "not run: Torch-Pruning 1.6's group search does not finish on it"}
TARGET = 2.0
DEFAULT = "channel-similarity-entropy"


def _plain(model: torch.nn.Module, x: torch.Tensor) -> None:
    work = copy.deepcopy(model)
    pruner = tp.pruner.MetaPruner(work, x, tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
                                  ignored_layers=list(task_heads(work)), num_heads=attention_num_heads(work))
    pruner.step()
    with torch.no_grad():
        forward(work, x)


def _ours(criterion: str):
    def run(model: torch.nn.Module, x: torch.Tensor) -> None:
        prune(model, x, criterion, ratio=0.5)
    return run


def measure(spec: str, size: int, repeats: int, clock) -> dict:
    model, x = build_curated(spec, size)
    methods = {"plain": _plain, "prune(l2)": _ours("tp-magnitude-l2"), "prune(default)": _ours(DEFAULT)}
    best: dict[str, float] = {}
    errors: dict[str, str] = {"plain": PLAIN_NEVER_FINISHES[spec]} if spec in PLAIN_NEVER_FINISHES else {}
    for _ in range(repeats):
        for name, method in methods.items():
            if name in errors:
                continue
            t = clock()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    method(model, x)
            except Exception as e:  # noqa: BLE001 - a model a side cannot handle is reported, not fatal
                errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"
                continue
            best[name] = min(best.get(name, float("inf")), clock() - t)
    return {"model": spec, "size": size, "seconds": best, "errors": errors}


def code_version() -> str:
    """The commit of the code measured, and whether the tracked files it runs (``entropy_importance/``, this script,
    the curated list) differ from it."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "entropy_importance",
                "benchmarks/prune_overhead.py", "benchmarks/curated.py")
    return f"commit {commit}" + (" with uncommitted changes to the package or this benchmark" if dirty else "")


def render(rows: list[dict], command: str, code: str = "") -> str:
    both = [r for r in rows if "plain" in r["seconds"] and "prune(l2)" in r["seconds"]]
    for r in both:
        s = r["seconds"]
        r["ratio_l2"] = s["prune(l2)"] / s["plain"]
        r["ratio_default"] = s["prune(default)"] / s["plain"] if "prune(default)" in s else float("nan")
    missed = [r["model"] for r in sorted(both, key=lambda r: -r["ratio_l2"]) if r["ratio_l2"] > TARGET]
    lines = [f"Measured {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, Torch-Pruning "
             f"{metadata.version('torch-pruning')}, {code or code_version()}: `{command}`. {len(both)} of {len(rows)} "
             f"curated models handled by both; `prune(l2)` within {TARGET:g}x of plain on "
             f"{sum(r['ratio_l2'] <= TARGET for r in both)} of them"
             + (f" (not: {', '.join(f'`{m}`' for m in missed)})" if missed else "")
             + f", `prune(default)` on {sum(r['ratio_default'] <= TARGET for r in both)}.", "",
             "| model | plain s | prune(l2) s | ÷ plain | prune(default) s | ÷ plain |", "|---|---|---|---|---|---|"]
    for r in sorted(both, key=lambda r: -r["ratio_l2"]):
        s = r["seconds"]
        lines.append(f"| `{r['model']}` | {s['plain']:.2f} | {s['prune(l2)']:.2f} | {r['ratio_l2']:.2f} | "
                     f"{s.get('prune(default)', float('nan')):.2f} | {r['ratio_default']:.2f} |")
    failed = [r for r in rows if r not in both]
    if failed:
        lines += ["", "Not handled by both (plain Torch-Pruning's error unless said otherwise): " + "; ".join(
            f"`{r['model']}`: {', '.join(f'{k}: {v}' for k, v in r['errors'].items())}" for r in failed)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=None, help="specs from the curated list (default: all)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    p.add_argument("--out", default=None, help="also write the markdown table here")
    p.add_argument("--rows", default=None, help="also include the rows printed by an earlier run (its log)")
    p.add_argument("--jsonl", default=None, help="also write the raw rows here, one JSON object a line")
    args = p.parse_args(argv)
    code = code_version()  # before the run: the code measured
    models = [(s, n) for s, n in CURATED_MODELS if args.models is None or s in args.models]
    rows = []
    if args.rows:
        import ast

        with open(args.rows) as f:
            rows = [ast.literal_eval(line) for line in f if line.startswith("{'model'")]
        models = [(s, n) for s, n in models if s not in {r["model"] for r in rows}]
    for spec, size in models:
        row = measure(spec, size, args.repeats, CLOCKS[args.clock])
        rows.append(row)
        print(row, flush=True)
    command = "python -m benchmarks.prune_overhead" + (f" --repeats {args.repeats}" if args.repeats != 3 else "")
    table = render(rows, command, code)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    if args.jsonl:
        with open(args.jsonl, "w") as f:
            for row in rows:
                f.write(json.dumps({k: row[k] for k in ("model", "size", "seconds", "errors")}) + "\n")


if __name__ == "__main__":
    main()
