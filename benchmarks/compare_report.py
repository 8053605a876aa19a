"""Summaries of ``benchmarks.compare`` results: markdown tables, the verdict, ablation decisions, a JSON file and
a plot. Everything here is derived from the results file; nothing is measured."""

from __future__ import annotations

import json
import math
import statistics
import time
from collections import defaultdict
from pathlib import Path

from entropy_importance import list_importances

BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"
OURS = set(list_importances(source="entropy-importance"))
METRICS = ("val", "test", "val_bn", "test_bn", "val_ft", "test_ft")


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(values: list[float], digits: int = 1) -> str:
    m, s = _mean_std(values)
    return f"{m:.{digits}f}" if len(values) == 1 else f"{m:.{digits}f} ± {s:.{digits}f}"


def binomial_se_diff(p_percent: float, n: int) -> float:
    """Standard error (percentage points) of the difference of two accuracies near ``p`` on ``n`` images each."""
    p = min(max(p_percent / 100, 1e-3), 1 - 1e-3)
    return 100 * math.sqrt(2 * p * (1 - p) / n)


def aggregate(rows: list[dict]) -> dict:
    """``{(arch, mode, target): {criterion: {metric: [values over seeds]}}}`` of the prune runs."""
    table: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in rows:
        if r["kind"] != "prune" or "error" in r:
            continue
        cell = table[(r["arch"], r["mode"], r["target"])][r["criterion"]]
        for k in (*METRICS, "speed_up", "calibration_s", "scoring_s", "params"):
            cell[k].append(r[k])
    return table


def ablation_decisions(rows: list[dict], defaults_first: dict[str, dict[str, list]],
                       normalizers: dict[str, list] | list[str]) -> list[dict]:
    """One decision per (criterion, option): the default stays unless an alternative beats it by > 2 SE."""
    acc: dict = defaultdict(list)
    n_val: dict = {}
    for r in rows:
        if r["kind"] == "ablation" and "error" not in r:
            for option, value in r["options"].items() or [(None, None)]:  # {} is the default configuration
                acc[(r["arch"], r["mode"], r["criterion"], option, json.dumps(value))].append(r["val"])
            n_val[r["arch"]] = r["n_val"]
    decisions = []
    options = [(c, o, vs, "local") for c, opts in defaults_first.items() for o, vs in opts.items()]
    if isinstance(normalizers, list):  # one list for every criterion
        normalizers = dict.fromkeys(sorted(OURS), normalizers)
    options += [(c, "normalizer", values, "global") for c, values in sorted(normalizers.items())]
    for arch in sorted(n_val):
        for criterion, option, values, mode in options:
            measured = {v: acc[(arch, mode, criterion, option, json.dumps(v))] for v in values[1:]}
            measured[values[0] if values else None] = acc[(arch, mode, criterion, None, "null")]
            measured = {v: measured[v] for v in values}
            if not measured or not all(measured.values()):
                continue
            means = {v: statistics.fmean(a) for v, a in measured.items()}
            default = values[0]
            best = max(values, key=lambda v: means[v])
            margin = means[best] - means[default]
            threshold = 2 * binomial_se_diff(means[default], n_val[arch]) / math.sqrt(len(measured[default]))
            decisions.append({"arch": arch, "criterion": criterion, "option": option, "mode": mode,
                              "default": default, "val": {json.dumps(v): means[v] for v in values},
                              "best": best, "margin": margin, "threshold": threshold,
                              "chosen": best if margin > threshold else default})
    return decisions


def verdicts(table: dict, n_test: int) -> list[dict]:
    """Best of ours vs best built-in on test accuracy, per setting; a tie when within 2 SE."""
    out = []
    for (arch, mode, target), cells in sorted(table.items()):
        for metric in ("test", "test_bn", "test_ft"):
            ours = {c: statistics.fmean(v[metric]) for c, v in cells.items() if c in OURS}
            theirs = {c: statistics.fmean(v[metric]) for c, v in cells.items() if c not in OURS and c != "tp-random"}
            if not ours or not theirs:
                continue
            best_ours, best_theirs = max(ours, key=ours.get), max(theirs, key=theirs.get)
            diff = ours[best_ours] - theirs[best_theirs]
            seeds = len(cells[best_ours][metric])
            se = binomial_se_diff(theirs[best_theirs], n_test) / math.sqrt(seeds)
            spread = max(_mean_std(cells[best_ours][metric])[1], _mean_std(cells[best_theirs][metric])[1])
            band = 2 * max(se, spread)
            out.append({"arch": arch, "mode": mode, "target": target, "metric": metric,
                        "best_ours": best_ours, "ours": ours[best_ours], "best_builtin": best_theirs,
                        "builtin": theirs[best_theirs], "diff": diff, "band": band,
                        "outcome": "win" if diff > band else "lose" if diff < -band else "tie",
                        "random": statistics.fmean(cells["tp-random"][metric]) if "tp-random" in cells else None})
    return out


def _markdown(rows: list[dict], table: dict, decisions: list[dict], verdict: list[dict], config: dict,
              command: str) -> str:
    bases = [r for r in rows if r["kind"] == "base"]
    seconds = sum(r["seconds"] for r in rows if r["kind"] == "session")
    lines = [BEGIN, "## Entropy criteria vs Torch-Pruning's built-ins on Fashion-MNIST", "",
             f"Produced by `{command}` on {time.strftime('%Y-%m-%d')}: {seconds / 60:.1f} min of wall time in all on "
             "this 2-core CPU machine (summed over resumed sessions). Settings: "
             + ", ".join(f"{k}={v}" for k, v in config.items() if k != "ablation_archs") + ".", "",
             "Cells are validation / test top-1 % (mean ± std over seeds when there are several), the best of "
             "each column in bold. *no FT* = right after pruning; *BN re-est.* = after re-estimating BatchNorm "
             "statistics on the calibration batches (no weight changes); *FT* = after the identical short "
             "fine-tune. *reached* = the MAC speed-up actually reached by the "
             "step that first crossed the target (Torch-Pruning's counter). Ours are marked ★. Calibration + "
             "scoring seconds are summed over all steps to the last target.", "",
             "### Base networks", "", "| arch | seed | params | MACs | val | test |", "|---|---|---|---|---|---|"]
    for b in sorted(bases, key=lambda r: (r["arch"], r["seed"])):
        lines.append(f"| {b['arch']} | {b['seed']} | {b['params'] / 1e6:.3f} M | {b['macs'] / 1e6:.1f} M | "
                     f"{b['val']:.2f} | {b['test']:.2f} |")
    groups = defaultdict(dict)
    for (arch, mode, target), cells in table.items():
        groups[(arch, mode)][target] = cells
    for (arch, mode), by_target in sorted(groups.items()):
        targets = sorted(by_target)
        lines += ["", f"### {arch}, {mode} ranking", "",
                  "| criterion | " + " | ".join(f"{t:g}x: reached | no FT | BN re-est. | FT" for t in targets)
                  + " | calib + score s |",
                  "|---|" + "---|" * (4 * len(targets) + 1)]
        criteria = sorted({c for cells in by_target.values() for c in cells}, key=lambda c: (c not in OURS, c))
        best = {(t, m): max(statistics.fmean(v[m]) for v in by_target[t].values()) for t in targets
                for m in METRICS}
        for c in criteria:
            cells = []
            for t in targets:
                v = by_target[t].get(c)
                if v is None:
                    cells += ["–"] * 4
                    continue
                cells.append(_fmt(v["speed_up"], 2))
                for stage in ("", "_bn", "_ft"):
                    pair = []
                    for m in (f"val{stage}", f"test{stage}"):
                        text = _fmt(v[m])
                        pair.append(f"**{text}**" if statistics.fmean(v[m]) == best[(t, m)] else text)
                    cells.append(" / ".join(pair))
            last = by_target[targets[-1]].get(c)
            timing = "–" if last is None else _fmt(
                [a + b for a, b in zip(last["calibration_s"], last["scoring_s"], strict=True)], 2)
            lines.append(f"| {'★ ' if c in OURS else ''}{c} | " + " | ".join(cells) + f" | {timing} |")
    if verdict:
        lines += ["", "### Verdict: best entropy criterion vs best built-in (random excluded)", "",
                  "Tie = the difference is within 2 standard errors (the larger of the binomial SE of the test "
                  "accuracy and the spread over seeds).", "",
                  "| arch | ranking | target | metric | best of ours | best built-in | ours − built-in | 2 SE | "
                  "outcome | random |", "|---|---|---|---|---|---|---|---|---|---|"]
        for v in verdict:
            rnd = "–" if v["random"] is None else f"{v['random']:.1f}"
            lines.append(f"| {v['arch']} | {v['mode']} | {v['target']:g}x | {v['metric'].replace('_', ' ')} | "
                         f"{v['best_ours']} ({v['ours']:.1f}) | {v['best_builtin']} ({v['builtin']:.1f}) | "
                         f"{v['diff']:+.1f} | {v['band']:.1f} | **{v['outcome']}** | {rnd} |")
    if decisions:
        lines += ["", "### Ablations of the inferred [I] choices (validation split only)", "",
                  "Pruned to the first target, BatchNorm statistics re-estimated, no fine-tune; one option changed "
                  "at a time from the default "
                  "(listed first); an alternative wins only when it beats the default by more than 2 SE.", "",
                  "| arch | criterion | option (ranking) | val accuracy per value | margin of best | 2 SE | chosen |",
                  "|---|---|---|---|---|---|---|"]
        for d in decisions:
            vals = ", ".join(f"{k}: {a:.1f}" for k, a in d["val"].items())
            lines.append(f"| {d['arch']} | {d['criterion']} | {d['option']} ({d['mode']}) | {vals} | "
                         f"{d['margin']:+.1f} | {d['threshold']:.1f} | `{json.dumps(d['chosen'])}` |")
    lines += ["", "![accuracy vs speed-up](benchmarks_accuracy.png)", "", END]
    return "\n".join(lines)


def _plot(table: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = sorted({(a, m) for a, m, _ in table})
    fig, axes = plt.subplots(2, len(panels), figsize=(5 * len(panels), 8), squeeze=False)
    for j, (arch, mode) in enumerate(panels):
        targets = sorted(t for a, m, t in table if (a, m) == (arch, mode))
        criteria = sorted({c for t in targets for c in table[(arch, mode, t)]})
        for i, metric in enumerate(("test", "test_ft")):
            ax = axes[i][j]
            for c in criteria:
                pts = [(statistics.fmean(table[(arch, mode, t)][c]["speed_up"]),
                        statistics.fmean(table[(arch, mode, t)][c][metric])) for t in targets
                       if c in table[(arch, mode, t)]]
                ax.plot(*zip(*pts, strict=True), marker="o", linestyle="-" if c in OURS else "--", label=c)
            ax.set_title(f"{arch}, {mode}: test accuracy {'after fine-tune' if metric == 'test_ft' else 'no FT'}")
            ax.set_xlabel("MAC speed-up")
            ax.set_ylabel("top-1 %")
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plan(rows: list[dict], ablations: dict, normalizers: dict) -> tuple[dict, dict]:
    """The ablation lists as they were when the results were made (first value = the default then); the given
    ones when the results have no plan row."""
    found = next((r for r in rows if r["kind"] == "plan"), None)
    return (found["ablations"], found["normalizers"]) if found else (ablations, normalizers)


def write_report(results: Path, docs: Path, config: dict, command: str, ablations: dict, normalizers: dict) -> None:
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    table = aggregate(rows)
    n_test = config.get("test_limit") or 10000
    decisions = ablation_decisions(rows, *plan(rows, ablations, normalizers))
    verdict = verdicts(table, n_test)
    docs.mkdir(parents=True, exist_ok=True)
    section = _markdown(rows, table, decisions, verdict, config, command)
    md = docs / "benchmarks.md"
    text = md.read_text() if md.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    md.write_text(text)
    summary = {"command": command, "config": config, "verdict": verdict, "ablations": decisions,
               "table": [{"arch": a, "mode": m, "target": t, "criterion": c, **v}
                         for (a, m, t), cells in sorted(table.items()) for c, v in sorted(cells.items())],
               "rows": rows}
    (docs / "benchmarks.json").write_text(json.dumps(summary, indent=1))
    _plot(table, docs / "benchmarks_accuracy.png")
