"""Coverage sweep: does ``entropy_importance.prune()`` prune and run every timm family and torchvision model?

    python scripts/sweep.py [--criteria NAME ...] [--timm-only | --torchvision-only] [--all-models]
                            [--max-params 100e6] [--max-params-torchvision 150e6] [--size 224]
                            [--timeout 600] [--jobs 1] [--memory-gb 16] [--out docs/coverage.md] [--jsonl sweep.jsonl]
                            [--resume] [--retry failed|timeouts] [--render COMMAND]

One model per timm architecture family (the smallest, skipping > ``--max-params``; ``--all-models`` for every
model) and the torchvision classification and detection models (detectors resize their input to 320 px, their
smallest standard size, and fixed-size timm models are built for the smallest multiple of ``--size`` they accept,
to keep the sweep affordable on a CPU). Each model runs in its own subprocess with a time
and memory limit (results finished before a timeout are kept); inside it, ``prune()`` with each criterion and then
plain Torch-Pruning (``MagnitudeImportance``, classifier ignored, nothing else configured, the same 60 s limit per
group as ``prune()``) prune it at ratio 0.5 (data-driven criteria are calibrated on 2 batches of random images).
A run passes when the pruned model runs, its outputs keep their structure and shapes, and its MACs
(Torch-Pruning's counter) dropped. Results
are appended to ``--jsonl`` (``--resume`` skips models already there) and summarised in ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

DETECTION = ["ssd300_vgg16", "ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_fpn",
             "fasterrcnn_mobilenet_v3_large_320_fpn", "retinanet_resnet50_fpn", "fcos_resnet50_fpn",
             "maskrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn"]
BASELINE = "tp-magnitude (plain)"
HAND_WRITTEN = "<!-- hand-written below: kept when the sweep rewrites this file -->"


def timm_families(all_models: bool, max_params: float) -> list[str]:
    import timm
    import torch
    from timm.models._registry import _model_to_module

    by_family: dict[str, list[str]] = defaultdict(list)
    for name in timm.list_models():
        by_family[_model_to_module.get(name, name)].append(name)
    chosen = []
    for _family, names in sorted(by_family.items()):
        sized = []
        for name in names:
            try:
                with torch.device("meta"):
                    n = sum(p.numel() for p in timm.create_model(name, pretrained=False).parameters())
            except Exception:  # noqa: BLE001 - unbuildable entries are skipped
                continue
            if n <= max_params:
                sized.append((n, name))
        if all_models:
            chosen += [f"timm:{name}" for _, name in sorted(sized)]
        elif sized:
            chosen.append(f"timm:{min(sized)[1]}")
    return chosen


def torchvision_models(max_params: float) -> tuple[list[str], dict[str, int]]:
    """Classification + detection models within ``max_params``, and the skipped ones with their sizes."""
    import torch
    import torchvision

    from entropy_importance.models import create_model

    classification = torchvision.models.list_models(module=torchvision.models)
    detection = [m for m in DETECTION if m in torchvision.models.list_models()]
    chosen, skipped = [], {}
    for name in classification + detection:
        spec = f"torchvision:{name}"
        try:
            with torch.device("meta"):
                n = sum(p.numel() for p in create_model(spec, **_detector_kwargs(name)).parameters())
        except NotImplementedError:  # builders that compute widths with tensors (RegNet) need real memory
            n = sum(p.numel() for p in create_model(spec, **_detector_kwargs(name)).parameters())
        if n <= max_params:
            chosen.append(spec)
        else:
            skipped[spec] = n
    return chosen, skipped


def _detector_kwargs(name: str) -> dict:
    if name.startswith(("fasterrcnn", "retinanet", "fcos", "maskrcnn", "keypointrcnn")):
        return {"min_size": 320, "max_size": 320}
    return {}


def _limit_memory(gb: float) -> None:
    import resource

    limit = int(gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run_one(spec: str, criteria: list[str], size: int) -> None:
    """Inside the child process: plain Torch-Pruning, then prune() with each criterion."""
    import copy
    import warnings

    import torch
    import torch_pruning as tp

    from entropy_importance import prune, task_heads
    from entropy_importance.engine import batch_size, forward, output_signature, tp_macs
    from entropy_importance.models import create_model
    from entropy_importance.repairs import GROUP_TIME_LIMIT

    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    detection = spec.split(":", 1)[1] in DETECTION

    def build():
        source, name = spec.split(":", 1)
        if source == "timm":
            import timm

            model = timm.create_model(name, pretrained=False, num_classes=10)
            cfg = getattr(model, "pretrained_cfg", {}) or {}
            native = (cfg.get("input_size") or (3, size, size))[-1]
            if not cfg.get("fixed_input_size"):  # the smallest of size, 2*size, ... that runs (Inception: 75 px)
                start = max(min(size, native), (cfg.get("min_input_size") or (3, 0, 0))[-1])
                x = smallest_input_that_runs(model.eval(), [*range(start, native, size), native])
                if x is not None:
                    return model, x
            # fixed-size models (ViTs, Swin, ...): rebuilt for the smallest of size, 2*size, ... that they accept
            for s in range(size, native, size):
                try:
                    small = timm.create_model(name, pretrained=False, num_classes=10, img_size=s).eval()
                    x = torch.randn(1, 3, s, s)
                    forward(small, x)
                    return small, x
                except Exception:  # noqa: BLE001 - this size or the img_size argument is not supported
                    continue
            return model.eval(), torch.randn(1, 3, native, native)
        model = create_model(spec, num_classes=None if detection else 10, **_detector_kwargs(name)).eval()
        if detection:
            return model, torch.randn(1, 3, 320, 320)
        x = smallest_input_that_runs(model, [*range(min(size, 224), 224, size), 224])  # Inception 75 px, MaxViT 224
        return model, x if x is not None else torch.randn(1, 3, 224, 224)

    def smallest_input_that_runs(model, sizes):
        for s in sizes:
            try:
                x = torch.randn(1, 3, s, s)
                forward(model, x)
                return x
            except Exception:  # noqa: BLE001 - too small for this network
                continue
        return None

    model, x = build()
    params = sum(p.numel() for p in model.parameters())
    reference = output_signature(forward(model, x), batch_size(x))
    base_macs = tp_macs(model, x)

    def check(pruned) -> tuple[str | None, dict]:
        """(failure or None, what was reached: params and MACs after, MAC speed-up)."""
        if output_signature(forward(pruned, x), batch_size(x)) != reference:
            return "output structure changed", {}
        macs = tp_macs(pruned, x)
        reached = {"params_after": sum(p.numel() for p in pruned.parameters()), "macs_before": base_macs,
                   "macs_after": macs, "speed_up": base_macs / macs if base_macs and macs else None}
        if base_macs is not None and macs is not None and macs >= base_macs:
            return "MACs did not drop", reached
        return None, reached

    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(2, *x.shape[1:], generator=g), torch.randint(0, 10, (2,), generator=g)) for _ in range(2)]
    for criterion in criteria:
        t = time.perf_counter()
        try:
            pruned, report = prune(model, x, criterion, ratio=0.5, calibration_data=data)
            failure, reached = check(pruned)
            kept = {k: v for k, v in report.kept_unpruned.items() if "classifier" not in v and "head" not in v}
        except Exception as e:  # noqa: BLE001
            failure, kept, reached = _reason(e), {}, {}
        _emit({"spec": spec, "criterion": criterion, "ok": failure is None, "reason": failure, "kept": kept,
               "seconds": time.perf_counter() - t, "params": params, "input": list(x.shape), **reached})

    # plain Torch-Pruning last, and with the same limit per group that prune() has (60 s): on some models its group
    # search never ends, which would otherwise spend the model's whole time limit before prune() has run
    t = time.perf_counter()
    try:  # plain Torch-Pruning prunes in place, so it gets its own copy; prune() never modifies its input
        plain = copy.deepcopy(model)
        with _alarm_per_group(GROUP_TIME_LIMIT):
            pruner = tp.pruner.MetaPruner(plain, x, importance=tp.importance.MagnitudeImportance(),
                                          pruning_ratio=0.5, ignored_layers=list(task_heads(plain)))
            pruner.step()
        failure, reached = check(plain)
        del plain, pruner
    except Exception as e:  # noqa: BLE001
        failure, reached = _reason(e), {}
    _emit({"spec": spec, "criterion": BASELINE, "ok": failure is None, "reason": failure,
           "seconds": time.perf_counter() - t, "params": params, "input": list(x.shape), **reached})


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}"


class _GroupTimeout(RuntimeError):
    pass


@contextlib.contextmanager
def _alarm_per_group(seconds: float):
    """Plain Torch-Pruning's own group search, limited per group with SIGALRM (this runs in the child process's main
    thread); ``prune()`` has the limit built into the repaired search."""
    import signal

    import torch_pruning as tp

    original = tp.DependencyGraph.get_pruning_group

    def on_alarm(signum, frame):
        raise _GroupTimeout(f"forming one group took longer than {seconds:g} s")

    def limited(self, module, pruning_fn, idxs):
        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return original(self, module, pruning_fn, idxs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    tp.DependencyGraph.get_pruning_group = limited
    try:
        yield
    finally:
        tp.DependencyGraph.get_pruning_group = original


def _emit(row: dict) -> None:
    print("RESULT " + json.dumps(row), flush=True)


def write_markdown(rows: list[dict], criteria: list[str], path: Path, command: str,
                   skipped: dict[str, int]) -> None:
    by_spec: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        by_spec[r["spec"]][r["criterion"]] = r
    columns = [BASELINE] + criteria
    lines = ["# Coverage: which models prune and run", "",
             f"Produced by `{command}` ({time.strftime('%Y-%m-%d')}). Ratio 0.5; pass = the pruned model runs, "
             "keeps its output structure and shapes, and its MACs dropped; a cell shows the MAC speed-up reached "
             "(Torch-Pruning's counter; rows recorded before speed-ups were recorded show none). "
             f"`{BASELINE}` is Torch-Pruning's `MagnitudeImportance` with only the task head ignored.", ""]
    for source in ("timm", "torchvision"):
        specs = sorted(s for s in by_spec if s.startswith(source))
        if not specs:
            continue
        lines += [f"## {source}: pass rates", "", "| criterion | pass | rate |", "|---|---|---|"]
        for c in columns:
            done = [by_spec[s][c] for s in specs if c in by_spec[s]]
            ok = sum(r["ok"] for r in done)
            lines.append(f"| {c} | {ok}/{len(done)} | {100 * ok / max(1, len(done)):.0f} % |")
        lines += ["", f"## {source}: per model", "", "| model | " + " | ".join(columns) + " | reason / kept unpruned |",
                  "|---|" + "---|" * (len(columns) + 1)]
        for s in specs:
            cells, notes = [], []
            for c in columns:
                r = by_spec[s].get(c)
                speed = f" {r['speed_up']:.2f}x" if r and r["ok"] and r.get("speed_up") else ""
                cells.append("–" if r is None else ("✓" if r["ok"] else "✗") + speed)
                if r and not r["ok"]:
                    notes.append(f"{c}: {r['reason']}")
                elif r and r.get("kept"):
                    notes.append(f"{c}: kept {', '.join(sorted(r['kept']))[:120]}")
            note = "; ".join(dict.fromkeys(notes))[:400].replace("|", "/")
            lines.append(f"| `{s}` | " + " | ".join(cells) + f" | {note} |")
        lines.append("")
        low = sorted({s for s in specs for c in criteria if (r := by_spec[s].get(c)) and r["ok"]
                      and r.get("speed_up") is not None and r["speed_up"] < 1.5})
        if low:
            lines += [f"## {source}: passing below 1.5x MAC speed-up at ratio 0.5", "",
                      "Explained in the hand-written section below (what `prune()` had to keep).", "",
                      ", ".join(f"`{s}`" for s in low), ""]
    if skipped:
        lines += ["## Not swept (over the parameter limit)", "",
                  ", ".join(f"`{s}` ({n / 1e6:.0f} M)" for s, n in sorted(skipped.items())), ""]
    kept = path.read_text().split(HAND_WRITTEN, 1) if path.exists() else []
    if len(kept) == 2:  # the hand-written explanations below the marker survive a re-run
        lines += [HAND_WRITTEN + kept[1].rstrip("\n")]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--criteria", nargs="*", default=None, help="default: all five of entropy-importance")
    p.add_argument("--timm-only", action="store_true")
    p.add_argument("--torchvision-only", action="store_true")
    p.add_argument("--all-models", action="store_true")
    p.add_argument("--models", nargs="*", default=None, help="explicit list of specs")
    p.add_argument("--max-params", type=float, default=100e6, help="timm: skip larger models")
    p.add_argument("--max-params-torchvision", type=float, default=150e6,
                   help="torchvision: skip larger models (150 M keeps the VGGs)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--jobs", type=int, default=1,
                   help="models run at once (Torch-Pruning's graph building is single-threaded Python, so 2 jobs "
                        "with one thread each nearly double throughput on 2 cores)")
    p.add_argument("--memory-gb", type=float, default=16,
                   help="address-space limit per model (CUDA builds of torch map several GB of it at import)")
    p.add_argument("--out", default="docs/coverage.md")
    p.add_argument("--jsonl", default="sweep.jsonl")
    p.add_argument("--resume", action="store_true", help="skip models already in --jsonl")
    p.add_argument("--retry", choices=["failed", "timeouts"], default=None,
                   help="with --resume: run again the listed models that had a failure (or only a timeout/crash)")
    p.add_argument("--render", metavar="COMMAND", default=None,
                   help="only rewrite --out from --jsonl, naming COMMAND as the command that produced the results")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    from entropy_importance import list_importances

    criteria = args.criteria or list_importances(source="entropy-importance")
    if args.child:
        _limit_memory(args.memory_gb)
        run_one(args.child, criteria, args.size)
        return

    skipped: dict[str, int] = {}
    if args.render:
        rows = [json.loads(line) for line in Path(args.jsonl).read_text().splitlines()]
        skipped = {} if args.timm_only else torchvision_models(args.max_params_torchvision)[1]
        write_markdown(rows, criteria, Path(args.out), args.render, skipped)
        return
    specs = args.models or ([] if args.torchvision_only else timm_families(args.all_models, args.max_params))
    if not args.models and not args.timm_only:
        tv, skipped = torchvision_models(args.max_params_torchvision)
        specs += tv
    jsonl = Path(args.jsonl)
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()] if args.resume and jsonl.exists() else []
    if args.retry:
        listed = set(specs)
        failed = {r["spec"] for r in rows if not r["ok"] and r["spec"] in listed
                  and (args.retry == "failed" or r["reason"].startswith(("timeout", "crashed")))}
        rows = [r for r in rows if r["spec"] not in failed]
        jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = {r["spec"] for r in rows}
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tqdm import tqdm

    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // args.jobs))
    command = "python scripts/sweep.py " + " ".join(argv or sys.argv[1:])
    todo = [spec for spec in specs if spec not in done]
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(_run_child, spec, criteria, args, threads) for spec in todo]
        for future in tqdm(as_completed(futures), total=len(todo), desc="sweep", unit="model"):
            got = future.result()
            with jsonl.open("a") as f:
                for row in got:
                    f.write(json.dumps(row) + "\n")
            rows += got
            write_markdown(rows, criteria, Path(args.out), command, skipped)


def _run_child(spec: str, criteria: list[str], args: argparse.Namespace, threads: str) -> list[dict]:
    """One model in its own process, under the time and memory limits; a row per criterion, even on a crash."""
    cmd = [sys.executable, __file__, "--child", spec, "--size", str(args.size),
           "--memory-gb", str(args.memory_gb), "--criteria", *criteria]
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
        stdout, missing = proc.stdout, f"crashed: {(proc.stderr.strip().splitlines() or ['no output'])[-1][:150]}"
    except subprocess.TimeoutExpired as e:
        out = e.stdout or ""
        stdout, missing = out.decode() if isinstance(out, bytes) else out, f"timeout > {args.timeout:.0f} s"
    got = [json.loads(line[7:]) for line in stdout.splitlines() if line.startswith("RESULT ")]
    have = {r["criterion"] for r in got}
    return got + [{"spec": spec, "criterion": c, "ok": False, "reason": missing}
                  for c in [BASELINE] + criteria if c not in have]

if __name__ == "__main__":
    main()
