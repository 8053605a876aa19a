"""``entropy-prune``'s printed report: sizes, MACs, measured latency, widths, what was kept and why."""

from __future__ import annotations

from .. import __version__

__all__ = ["print_report", "format_count"]


def format_count(n: float, unit: str = "") -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3f} {suffix}{unit}"
    return f"{n:.0f} {unit}".strip()


def _latency_rows(latency: dict) -> list[tuple[str, float, float]]:
    rows = []
    for backend, label in (("pytorch", f"latency {latency['device']}"), ("onnxruntime", "latency ONNX Runtime cpu")):
        if backend not in latency:
            continue
        before, after = latency[backend]["before"], latency[backend]["after"]
        for batch in before:
            rows.append((f"{label} b{batch} (ms)", before[batch]["median_ms"], after[batch]["median_ms"]))
    return rows


def _latency_note(latency: dict) -> str:
    """How the latency figures were measured: runs per figure (their range), warm-up, budget, largest spread."""
    figures = [t for backend in ("pytorch", "onnxruntime") for by_batch in latency.get(backend, {}).values()
               for t in by_batch.values()]
    fewest, most = min(t["runs"] for t in figures), max(t["runs"] for t in figures)
    runs = f"{fewest}" if fewest == most else f"{fewest}-{most}"
    spread = max(((t["max_ms"] - t["min_ms"]) / t["median_ms"] for t in figures if t["median_ms"] > 0), default=0.0)
    how = f"a {latency['budget_s']:g} s budget shared by the figures" if latency["budget_s"] else "a fixed count"
    return (f"latency ({latency['mode']}): median of {runs} timed runs per figure ({how}) after {latency['warmup']} "
            f"warm-up run(s), torch.inference_mode; largest spread (max - min) / median {100 * spread:.0f} %; each "
            "figure's runs, min and max are in --json")


def print_report(r: dict) -> None:
    b, a = r["before"], r["after"]
    scope = "global" if r["global_pruning"] else "local"
    data = f" | calibrated on {r['data']}" if r["data"] else ""
    target = f" (speed-up target {r['speed_up_target']})" if r["speed_up_target"] else ""
    print(f"entropy-importance {__version__}: {r['model']} ({r['weights']} weights) | criterion {r['criterion']} | "
          f"ratio {r['ratio']:.3f}{target} ({scope}) | input {'x'.join(map(str, r['input_size']))} | "
          f"device {r['device']}{data}")
    if r["weights"] == "random":
        print("note: weights are random; pass --pretrained or --checkpoint FILE to prune trained weights")
    rows = [("params", b["params"], a["params"]),
            ("MACs (thop)", b["macs"]["thop"], a["macs"]["thop"]),
            ("MACs (Torch-Pruning)", b["macs"]["tp"], a["macs"]["tp"])]
    print(f"{'':34s}{'before':>12s}{'after':>12s}{'before/after':>14s}")
    for name, x0, x1 in rows:
        print(f"{name:34s}{format_count(x0):>12s}{format_count(x1):>12s}{x0 / x1:>14.3f}")
    if r["latency"]:
        for name, x0, x1 in _latency_rows(r["latency"]):
            print(f"{name:34s}{x0:>12.2f}{x1:>12.2f}{x0 / x1:>14.3f}")
        print(_latency_note(r["latency"]))
        print("a MAC speed-up need not show in latency (memory-bound layers, small batches, channel counts the "
              "kernels do not favour); --latency full times more runs")
    print("MACs: both counters agree on conv/linear layers; thop counts BatchNorm as 2 ops per element and skips "
          "ReLU and max-pooling, Torch-Pruning counts 1 per element for each; Torch-Pruning's is the counter of "
          "its speed-up tables.")
    print("widths per stage (before -> after):")
    for name, w0 in b["widths"].items():
        print(f"  {name:24s}{w0:>6d} -> {a['widths'].get(name, w0)}")
    t = r["timings"]
    for name, reason in r["kept_unpruned"].items():
        print(f"kept unpruned: {name}: {reason}")
    recovery = r.get("recovery")
    if recovery:
        print(f"recovery {recovery['method']}: {recovery['refitted']} layers refitted, {recovery['batchnorm_layers']} "
              f"BatchNorm layers re-estimated on {recovery['images']} images, {recovery['seconds']:.2f} s "
              "(inside the pruning time)")
    print(f"wall time {t['total_s']:.2f} s (pruning {t['prune_s']:.2f} s, counting "
          f"{t['count_before_s'] + t['count_after_s']:.2f} s, latency {t.get('latency_s', 0.0):.2f} s)")
    if r["out"]:
        print(f"saved pruned model to {r['out']} (load: entropy_importance.load_pruned({r['out']!r}))")
