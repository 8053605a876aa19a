"""The report of ``benchmarks.quality``: a markdown page and its plots, written from the result rows only (every
number on the page is read or computed from a row; nothing is typed in)."""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter, defaultdict
from pathlib import Path

from .quality_calibration import calibration_section
from .quality_pipelines_report import pipeline_section
from .quality_recovery_report import recovery_section
from .quality_stats import RANDOM, Cell, Comparison, cells, comparisons, mean_std

#: code versions declared to give the results of a later one (a change that cannot move any row's number, or whose
#: affected rows were run again): ``[{"code", "same_results_as", "changed", "why"}]``, read by the report only
EQUIVALENCE = Path(__file__).with_name("quality_equivalent_code.json")

#: which regimes stand in for one the sizing could not time (the recovery step was not there yet)
SUBSTITUTES = {"reconstruct": "bn", "reconstruct+ft": "ft"}
REGIME_TEXT = {"none": "as pruned", "bn": "BatchNorm statistics re-estimated",
               "reconstruct": "the recovery step (`recover`)", "reconstruct+ft": "recovery step, then the short "
               "fine-tune", "ft": "the short fine-tune", "ft-long": "a long fine-tune"}


def _ours() -> set[str]:
    from entropy_importance import list_importances

    return set(list_importances(source="entropy-importance"))


def _fmt_ms(values: list[float]) -> str:
    m, s = mean_std(values)
    return f"{m:.2f}" if len(values) == 1 else f"{m:.2f} ± {s:.2f}"


def _fmt_interval(c: Comparison | None, which: str = "vs_reference") -> str:
    iv = None if c is None else getattr(c, which)
    if iv is None:
        return "–"
    if iv.low is None:
        return f"{iv.mean:+.2f} (1 seed)"
    return f"{iv.mean:+.2f} [{iv.low:+.2f}, {iv.high:+.2f}] {iv.verdict}"


def _settings_order(keys, archs, regimes) -> list[tuple]:
    def rank(k):
        a, m, t, r = k
        return (archs.index(a) if a in archs else 99, regimes.index(r) if r in regimes else 99, m != "local", t)
    return sorted(keys, key=rank)


def sizing(rows: list[dict], cfg) -> tuple[list[str], dict | None]:
    """The measured epoch times (``timing`` rows) and what they make of the full run of ``cfg``."""
    timing = {}
    for r in rows:
        if r.get("kind") == "timing" and r.get("width") == cfg.width:
            timing[r["arch"]] = r  # the latest measurement of each architecture
    if not timing:
        return [], None
    lines = [f"| arch | params | MACs | one epoch (s) | threads | steps of {cfg.batch_size} | test % after a "
             "one-epoch schedule | test-set evaluation (s) | measured cells (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    per_seed_cells = len(cfg.methods) * len(cfg.modes) * len(cfg.targets)
    total = {"bases": 0.0, "cells": 0.0}
    per_arch = {}
    substituted = set()
    clocks, unvalidated = set(), set()
    for arch, t in sorted(timing.items()):
        cpu = "epoch_cpu_seconds" in t  # CPU seconds of the one-thread process where measured, else wall seconds
        clocks.add("CPU" if cpu else "wall")
        cell_seconds = []
        for c in t["cells"]:
            regimes = dict(c["regime_cpu_seconds"] if cpu else c["regime_seconds"])
            for regime in cfg.regimes:
                if regime not in regimes and SUBSTITUTES.get(regime) in regimes:
                    regimes[regime] = regimes[SUBSTITUTES[regime]]
                    substituted.add(regime)
            prune = c.get("prune_cpu_seconds" if cpu else "prune_seconds") or 0.0
            seconds = prune + sum(regimes[r] for r in cfg.regimes if r in regimes)
            if not c.get("val_images") and "none" in regimes:  # measured before cells were also validated:
                # "none" is one test-set evaluation of the pruned network; validation costs its share of that
                seconds += len(cfg.regimes) * regimes["none"] * cfg.cell_val_images / t["n_test"]
                unvalidated.add(arch)
            cell_seconds.append(seconds)
        cell = statistics.fmean(cell_seconds)
        epoch, evaluation = (t["epoch_cpu_seconds"], t["eval_cpu_seconds"]) if cpu else (t["epoch_seconds"],
                                                                                        t["eval_seconds"])
        base = cfg.epochs * epoch + evaluation * 1.5  # test + validation (5000) evaluation
        per_arch[arch] = {"base": base, "cell": cell}
        total["bases"] += len(cfg.seeds) * base
        total["cells"] += len(cfg.seeds) * per_seed_cells * cell
        timed = ", ".join(f"{c['mode']} {c['method']} {c['target']:g}x: {s:.0f}" for c, s in
                          zip(t["cells"], cell_seconds, strict=True))
        wall = f" ({t['epoch_seconds']:.0f} wall)" if cpu else ""
        lines.append(f"| {arch} | {t['params'] / 1e3:.0f} k | {t['macs'] / 1e6:.1f} M | {epoch:.1f}{wall} | "
                     f"{t['threads']} | {t['steps']} | {t['top1_one_epoch']:.2f} | {evaluation:.1f} | {timed} |")
    core = total["bases"] + total["cells"]
    est = {"per_arch": per_arch, "bases_s": total["bases"], "cells_s": total["cells"], "core_s": core,
           "wall_h_2": core / 2 / 3600, "per_seed_cells": per_seed_cells, "substituted": sorted(substituted),
           "threads": sorted({t["threads"] for t in timing.values()}), "at": max(t["at"] for t in timing.values()),
           "clock": " and ".join(sorted(clocks)), "unvalidated": sorted(unvalidated)}
    return lines, est


def _plots(table: dict, archs: list[str], regimes: list[str], modes: list[str], comps: list[Comparison],
           out: Path, ours: set[str]) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    by_key = {(c.key, c.method): c for c in comps}
    for mode in modes:
        keys = [k for k in table if k[1] == mode]
        if not keys:
            continue
        rs = [r for r in regimes if any(k[3] == r for k in keys)]
        fig, axes = plt.subplots(len(archs), len(rs), figsize=(3.6 * len(rs), 3.2 * len(archs)), squeeze=False)
        methods = sorted({m for k in keys for m in table[k]}, key=lambda m: (m not in ours, m))
        colors = {m: plt.cm.tab20(i % 20) for i, m in enumerate(methods)}
        for i, arch in enumerate(archs):
            for j, regime in enumerate(rs):
                ax = axes[i][j]
                for m in methods:
                    pts = sorted((table[k][m].macs_ratio, *mean_std(list(table[k][m].top1.values())))
                                 for k in keys if k[0] == arch and k[3] == regime and m in table[k])
                    if pts:
                        x, y, e = zip(*pts, strict=True)
                        ax.errorbar(x, y, yerr=e, marker="o" if m in ours else "s", ms=3, capsize=2, lw=1,
                                    ls="-" if m in ours else "--", color=colors[m], label=m)
                ax.set_title(f"{arch}: {regime}", fontsize=9)
                ax.set_xlabel("MACs kept (fraction)", fontsize=8)
                ax.set_ylabel("test top-1 %", fontsize=8)
                ax.tick_params(labelsize=7)
                ax.grid(alpha=0.3)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=7)
        fig.suptitle(f"{mode} ranking: test accuracy vs MACs (mean ± std over base seeds; ours solid)", fontsize=10)
        fig.tight_layout(rect=(0, 0.06, 1, 0.97))
        name = f"quality_accuracy_{mode}.png"
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        written.append(name)

        fig, axes = plt.subplots(len(archs), len(rs), figsize=(3.6 * len(rs), 0.28 * len(methods) * len(archs) + 1.5),
                                 squeeze=False)
        targets = sorted({k[2] for k in keys})
        for i, arch in enumerate(archs):
            for j, regime in enumerate(rs):
                ax = axes[i][j]
                for ti, target in enumerate(targets):
                    key = (arch, mode, target, regime)
                    ys, xs, lo, hi = [], [], [], []
                    for y, m in enumerate(methods):
                        c = by_key.get((key, m))
                        iv = None if c is None else c.vs_reference
                        if iv is None:
                            continue
                        ys.append(y + (ti - (len(targets) - 1) / 2) * 0.25)
                        xs.append(iv.mean)
                        lo.append(0 if iv.low is None else iv.mean - iv.low)
                        hi.append(0 if iv.high is None else iv.high - iv.mean)
                    if xs:
                        ax.errorbar(xs, ys, xerr=[lo, hi], fmt="o", ms=3, capsize=2, lw=1, label=f"{target:g}x")
                ax.axvline(0, color="black", lw=0.8)
                ax.set_yticks(range(len(methods)), methods, fontsize=6)
                ax.set_ylim(-0.5, len(methods) - 0.5)
                ax.set_title(f"{arch}: {regime}", fontsize=9)
                ax.set_xlabel("top-1 minus best built-in (pp), 95 % CI", fontsize=7)
                ax.tick_params(axis="x", labelsize=7)
                ax.grid(alpha=0.3, axis="x")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"{mode} ranking: paired difference to the best Torch-Pruning built-in of each setting",
                     fontsize=10)
        fig.tight_layout(rect=(0, 0, 1, 0.97))
        name = f"quality_differences_{mode}.png"
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        written.append(name)
    return written


def _advice(table: dict, comps: list[Comparison], ours: set[str], regimes: list[str]) -> list[str]:
    """"Which criterion should I use?": every sentence counts or quotes table cells."""
    lines = []
    with_ci = [c for c in comps if c.vs_reference is not None and c.vs_reference.low is not None]
    if not with_ci:
        seeds = max((len(c.top1) for cs in table.values() for c in cs.values()), default=0)
        return [f"Every setting here has {seeds} base seed(s), so no paired difference has an interval and this "
                "page makes no claim that one criterion is better or worse than another; run at least three seeds."]
    settings = len({c.key for c in with_ci})
    theirs = [c for c in with_ci if c.method in ours]
    better = [c for c in theirs if c.vs_reference.verdict == "better"]
    worse = [c for c in theirs if c.vs_reference.verdict == "worse"]
    if not better:
        lines.append(f"No entropy criterion is better than the best Torch-Pruning built-in in any of the {settings} "
                     f"settings (arch, mode, target, regime) with an interval: of {len(theirs)} comparisons, "
                     f"{len(theirs) - len(worse)} are ties and {len(worse)} are worse.")
    else:
        where = "; ".join(f"{c.method} in {c.key[0]} {c.key[1]} {c.key[2]:g}x {c.key[3]} "
                          f"({c.vs_reference.mean:+.2f} [{c.vs_reference.low:+.2f}, {c.vs_reference.high:+.2f}] "
                          f"vs {c.reference})" for c in better)
        lines.append(f"An entropy criterion is better than the best built-in in {len(better)} of {len(theirs)} "
                     f"comparisons ({settings} settings): {where}. {len(worse)} comparisons are worse, the rest "
                     "ties.")
    lines.append(_chance_line(len(theirs), len(better)))
    for m in sorted(ours):
        mine = [c for c in theirs if c.method == m]
        if mine:
            n = Counter(c.vs_reference.verdict for c in mine)
            lines.append(f"`{m}`: better in {n['better']}, tie in {n['tie']}, worse in {n['worse']} of {len(mine)} "
                         "settings.")
    refs = Counter(c.reference for c in {c.key: c for c in with_ci}.values())
    lines.append("The best built-in of a setting (the reference) is " + ", ".join(
        f"`{r}` in {k}" for r, k in refs.most_common()) + f" of {settings} settings.")
    vs_random = [c for c in comps if c.vs_random is not None and c.vs_random.low is not None]
    not_beating = defaultdict(list)
    for c in vs_random:
        if c.vs_random.verdict != "better":
            not_beating[c.method].append(c)
    if not_beating:
        parts = [f"`{m}` in {len(cs)} of {sum(c.method == m for c in vs_random)}" for m, cs in
                 sorted(not_beating.items(), key=lambda kv: (-len(kv[1]), kv[0]))]
        lines.append("Not better than random selection (the interval of the difference to `tp-random` includes 0 or "
                     "lies below it): " + ", ".join(parts) + " settings.")
    else:
        n = len({c.key for c in vs_random})
        lines.append(f"Every method is better than random selection in every one of the {n} settings with an "
                     "interval.")
    for regime in regimes:
        by_setting = _regime_means(table, regime)
        if not by_setting:
            continue
        top: Counter = Counter()
        for means in by_setting.values():
            top.update(m for m, v in means.items() if v == max(means.values()))  # a tie counts for each
        (best, n), *_ = top.most_common()
        kind = "an entropy criterion" if best in ours else "a Torch-Pruning built-in"
        lines.append(f"After `{regime}` ({REGIME_TEXT.get(regime, regime)}), the highest mean top-1 is `{best}` "
                     f"({kind}) in {n} of {len(by_setting)} settings" + (
                         "; " + ", ".join(f"`{m}` in {k}" for m, k in top.most_common()[1:]) if len(top) > 1 else "")
                     + " (a tie counts for each).")
    lines += _bottom_line(table, ours, better, len(theirs))
    return lines


#: one side of a two-sided 95 % interval: the share of comparisons expected to read "better" by chance alone
CHANCE_BETTER = 0.025


def _chance_line(comparisons: int, better: int) -> str:
    """How many "better" verdicts chance alone would give among ``comparisons`` (no correction for multiple
    comparisons is made in the tables: this sentence puts their count in scale)."""
    expected = CHANCE_BETTER * comparisons
    scale = "fewer than" if better < expected - 1 else "more than" if better > expected + 1 else "about"
    return (f"Many comparisons are made here: where no difference exists, about {CHANCE_BETTER:.1%} of 95 % "
            f"intervals still lie above zero, so about {expected:.1f} of these {comparisons} would read *better* by "
            f"chance alone; {better} did, {scale} that.")


def _regime_means(table: dict, regime: str) -> dict[tuple, dict[str, float]]:
    return {k[:3]: {m: statistics.fmean(c.top1.values()) for m, c in cs.items()} for k, cs in table.items()
            if k[3] == regime and cs}


def _bottom_line(table: dict, ours: set[str], better: list[Comparison], comparisons: int) -> list[str]:
    """What matters more, the criterion or the repair after pruning (means over the tables' cells), and the advice
    that follows from the counts above."""
    out = []
    none, rec = _regime_means(table, "none"), _regime_means(table, "reconstruct")
    shared = sorted(set(none) & set(rec))
    if shared:
        gain = statistics.fmean(statistics.fmean(rec[k].values()) - statistics.fmean(none[k].values())
                                for k in shared)
        spread = statistics.fmean(max(rec[k].values()) - min(rec[k].values()) for k in shared)
        spread_ours = [max(v for m, v in rec[k].items() if m not in ours | {RANDOM})
                       - max(v for m, v in rec[k].items() if m in ours) for k in shared
                       if any(m in ours for m in rec[k]) and any(m not in ours | {RANDOM} for m in rec[k])]
        out.append(f"What matters more: over the {len(shared)} (arch, mode, target) settings, the recovery step adds "
                   f"{gain:+.1f} pp on average (`reconstruct` − `none`, mean over methods), while after it the methods "
                   f"(random included) span {spread:.1f} pp on average from worst to best"
                   + (", and the best built-in leads the best entropy criterion by "
                      f"{statistics.fmean(spread_ours):+.2f} pp on average" if spread_ours else "") + ".")
    if len(better) <= CHANCE_BETTER * comparisons + 1:
        out.append("So, on these networks and data: choose the channels with a Torch-Pruning built-in (the references "
                   "above) and repair the pruned network with `recover(method=\"reconstruct\")`; no entropy criterion "
                   "here is better often enough to be told apart from chance.")
    else:
        names = sorted({c.method for c in better})
        out.append("So, on these networks and data: an entropy criterion is worth trying where it is better above ("
                   + ", ".join(f"`{m}`" for m in names) + "), and repair the pruned network with "
                   "`recover(method=\"reconstruct\")` whatever the criterion.")
    return out


def equivalent_codes(current: str, declarations: list[dict]) -> dict[str, dict]:
    """The code versions whose rows count as ``current``'s, each with the declaration that links it (followed
    transitively: ``a`` same as ``b``, ``b`` same as ``current``)."""
    same: dict[str, dict | None] = {current: None}
    grew = True
    while grew:
        grew = False
        for d in declarations:
            if d["same_results_as"] in same and d["code"] not in same:
                same[d["code"]] = d
                grew = True
    return {c: d for c, d in same.items() if d is not None}


def read_declarations(path: Path = EQUIVALENCE) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def write_report(rows: list[dict], cfg, out: Path, rows_path: Path, command: str, current_code: str,
                 declarations: list[dict] | None = None) -> Path:
    """Write ``out/quality.md`` (and its PNG plots) from ``rows`` of configuration ``cfg``; returns the page.
    ``declarations`` (default: :data:`EQUIVALENCE`) say which other code versions give the current code's
    results; their rows are not marked as other code, and the page quotes each declaration it used."""
    out.mkdir(parents=True, exist_ok=True)
    declared = equivalent_codes(current_code, read_declarations() if declarations is None else declarations)
    REGIME_TEXT["ft-long"] = f"{cfg.finetune_long_epochs:g} epoch(s) of the training split of fine-tuning"
    REGIME_TEXT["reconstruct"] = f"the recovery step, `entropy_importance.recover(method=\"{cfg.recover_method}\")`"
    ours = _ours()
    setup = cfg.setup_id()
    mine = [r for r in rows if r.get("setup") == setup]
    other_setups = sum(1 for r in rows if r.get("kind") == "cell" and r.get("setup") != setup)
    cell_rows = [r for r in mine if r.get("kind") == "cell"]
    bases = sorted((r for r in rows if r.get("kind") == "base" and r.get("config") == cfg.name
                    and r["setup_base"] == cfg.base_id(r["arch"])), key=lambda r: (r["arch"], r["seed"]))
    table = cells([{**r, "code": current_code} if r.get("code") in declared else r for r in cell_rows],
                  current_code)
    archs = [a for a in cfg.archs if any(k[0] == a for k in table)] or list(cfg.archs)
    regimes = [r for r in ("none", "bn", "reconstruct", "reconstruct+ft", "ft", "ft-long")
               if any(k[3] == r for k in table)]
    modes = [m for m in cfg.modes if any(k[1] == m for k in table)]
    builtins = {m for cs in table.values() for m in cs if m not in ours}
    comps = comparisons(table, builtins)
    by = {(c.key, c.method): c for c in comps}
    sessions = [r for r in mine if r.get("kind") == "session"]
    commits = Counter((r.get("code"), (r.get("commit") or "?")[:10], r.get("dirty")) for r in cell_rows)
    stale = sum(1 for r in cell_rows if r.get("code") != current_code and r.get("code") not in declared)
    used = Counter(r.get("code") for r in cell_rows if r.get("code") in declared)
    devices = Counter(r.get("device") for r in cell_rows)
    versions = Counter(tuple(sorted(r.get("versions", {}).items())) for r in cell_rows)

    L = ["# Which criterion gives the better pruned network?", "",
         f"<!-- written by `{command} --report` from {rows_path.name}; do not edit by hand -->", "",
         f"Written {time.strftime('%Y-%m-%d')} by `{command} --report` from the {len(rows)} rows of "
         f"[`{rows_path.name}`]({rows_path.name}) ({len(cell_rows)} result rows of this setup, `{setup}`; "
         f"{sum(1 for r in cell_rows if r.get('top1') is None)} of them errors).", ""]
    if versions:
        L.append("Versions: " + "; ".join(", ".join(f"{k} {v}" for k, v in vs) + f" ({n} rows)"
                                          for vs, n in versions.most_common()) + ". Devices: "
                 + ", ".join(f"{d} ({n} rows)" for d, n in devices.most_common()) + ".")
        L.append("")
    if stale:
        L += [f"**{stale} of {len(cell_rows)} result rows come from other code** than the current tree (code "
              f"`{current_code}`); the cells they enter are marked †. Code versions in the rows: "
              + ", ".join(f"`{c}` (commit {h}{', uncommitted changes' if d else ''}): {n} rows"
                          for (c, h, d), n in commits.most_common()) + ".", ""]
    for code, n in used.most_common():
        d = declared[code]
        L += [f"{n} result rows of code `{code}` count as the current code's (`{current_code}`), as declared in "
              f"`benchmarks/{EQUIVALENCE.name}`: since then {', '.join(f'`{f}`' for f in d.get('changed', []))} "
              f"changed; {d['why']}", ""]
    if other_setups:
        L += [f"{other_setups} result rows of other setups (another schedule or size) are in the file and not used "
              "here.", ""]

    L += ["## Setup", "",
          f"* Data: Fashion-MNIST at its native 1x28x28; {cfg.train_limit or 55000} training images (a validation "
          f"split of {cfg.val_limit or 5000} held out of the 60 000 with a fixed seed), every accuracy below on "
          f"{cfg.test_limit or 10000} test images. Run: `{command} --jobs 2` (it resumes from the rows it finds; "
          f"`--report` rewrites this page).",
          f"* Bases: {', '.join(f'`{a}`' for a in cfg.archs)} (`recipes.fmnist_models`, width x{cfg.width:g}), "
          f"seeds {', '.join(map(str, cfg.seeds))}; {cfg.epochs:g} epochs of SGD (Nesterov momentum 0.9, batch "
          f"{cfg.batch_size}, weight decay {cfg.weight_decay:g}, one-cycle to lr {cfg.lr:g}, horizontal flips) "
          "through `recipes.trainer.fit`; accuracy at the end of the schedule.",
          f"* Pruning: at {', '.join(f'{t:g}x' for t in cfg.targets)} MACs (Torch-Pruning's counter). *local*: "
          "every group pruned by one uniform ratio, found per architecture with Torch-Pruning's L2 (the same widths "
          "for every method: only the choice of channels differs); *global*: `prune(speed_up=target, "
          f"global_pruning=True)`. Criteria measured on {cfg.calibration_images} training images (seeded per base), "
          "the same for every method of a base.",
          "* Regimes: " + "; ".join(f"*{r}*: {REGIME_TEXT[r]}" for r in cfg.regimes)
          + f". BatchNorm re-estimation and the recovery step use the same {cfg.calibration_images} calibration "
          f"images; the short fine-tune is {cfg.finetune_images} training images once (batch {cfg.batch_size}, "
          f"cosine from lr {cfg.finetune_lr:g}), the same images and order for every method of a base.",
          "* Statistics: mean ± std over base seeds; for each method the paired difference (by base seed) to the "
          "best Torch-Pruning built-in of the same setting (the highest mean top-1 on "
          f"{cfg.cell_val_images} held-out validation images, random excluded: the test set chooses nothing), "
          "with its 95 % Student-t "
          "interval (n − 1 degrees of freedom): *better* / *worse* only where the interval excludes 0, *tie* "
          "otherwise; *≤ rnd* marks a method whose difference to `tp-random` does not exclude 0 from below.", ""]
    recover_sessions = [s.get("recover_available") for s in sessions]
    if recover_sessions and not any(recover_sessions) and set(cfg.regimes) & {"reconstruct", "reconstruct+ft"}:
        L += ["*The reconstruct regimes are not in these rows: `entropy_importance.recover` was not available "
              "when they were run (a later run fills them in).*", ""]

    size_lines, est = sizing(rows, cfg)
    if est is not None:
        L += ["## Sizing: measured epoch times", "",
              f"Measured with `{command} --measure` (the date of the latest row: "
              f"{time.strftime('%Y-%m-%d', time.localtime(est['at']))}) on {', '.join(map(str, est['threads']))} "
              "torch thread(s): one epoch of the full training split through the training loop (a one-epoch "
              "one-cycle schedule), one evaluation of the test set, and two whole cells on that one-epoch network "
              f"(prune and every regime that could run). Seconds are {est['clock']} seconds of the measuring process"
              + (" (wall seconds in parentheses): the machine was shared with other work; on one thread the CPU time "
                 "leaves out the waits for a core but not the slowdown of sharing caches with that work, so an idle "
                 "machine should take less" if "CPU" in est["clock"] else "")
              + ".", ""] + size_lines + [""]
        sub = (" The regimes " + ", ".join(f"`{r}`" for r in est["substituted"]) + " could not be timed (the "
               "recovery step was not there) and are counted at the cost of "
               + ", ".join(f"`{SUBSTITUTES[r]}`" for r in est["substituted"]) + ".") if est["substituted"] else ""
        if est["unvalidated"]:
            sub += (f" The cells of {', '.join(est['unvalidated'])} were timed without the validation measurement "
                    f"({cfg.cell_val_images} images per regime); it is added as that share of the `none` regime "
                    "(one test-set evaluation of the pruned network).")
        L += [f"The full run: per architecture {len(cfg.seeds)} bases of {cfg.epochs:g} epochs, and per base "
              f"{est['per_seed_cells']} cells ({len(cfg.methods)} methods x {len(cfg.modes)} modes x "
              f"{len(cfg.targets)} targets) of {len(cfg.regimes)} regimes each, every cell costed like the measured "
              f"ones at {cfg.targets[0]:g}x (the {cfg.targets[-1]:g}x cells are smaller).{sub}", "",
              "| arch | one base (s) | one cell (s) |", "|---|---|---|"]
        L += [f"| {a} | {v['base']:.0f} | {v['cell']:.0f} |" for a, v in est["per_arch"].items()]
        L += ["", f"Bases {est['bases_s'] / 3600:.2f} h + cells {est['cells_s'] / 3600:.2f} h = "
              f"**{est['core_s'] / 3600:.2f} core-hours, about {est['wall_h_2']:.1f} hours on two cores** (two "
              "worker processes of one thread each, `--jobs 2`).", ""]
        spent = [r["seconds"] or 0 for r in mine if r.get("kind") == "session"]
        if spent:
            L += [f"Wall time of the run sessions in these rows: {sum(spent) / 3600:.2f} h.", ""]

    L += ["## Base networks", ""]
    if bases:
        L += ["| arch | seed | params | MACs | validation top-1 | test top-1 | ≥ 92 % | training (s) |",
              "|---|---|---|---|---|---|---|---|"]
        for b in bases:
            secs = "cached" if b.get("seconds") is None else f"{b['seconds']:.0f}"
            L.append(f"| {b['arch']} | {b['seed']} | {b['params'] / 1e3:.0f} k | {b['macs'] / 1e6:.1f} M | "
                     f"{b['val_top1']:.2f} | {b['top1']:.2f} | {'yes' if b['top1'] >= 92 else '**no**'} | {secs} |")
        low = [b for b in bases if b["top1"] < 92]
        L += ["", (f"{len(low)} of {len(bases)} bases are below 92 % test accuracy." if low else
                   f"All {len(bases)} bases reach 92 % test accuracy."), ""]
    else:
        L += ["No base network has been trained with this setup yet.", ""]

    ratios = sorted({(r["arch"], r["target"]): r for r in rows if r.get("kind") == "ratio"
                     and r["setup_base"] == cfg.base_id(r["arch"])}.values(), key=lambda r: (r["arch"], r["target"]))
    if ratios:
        L += ["Local ratios (Torch-Pruning's L2 on a freshly initialised network; every method and seed reuses "
              "them): " + ", ".join(f"{r['arch']} {r['target']:g}x: {r['ratio']:.3f} (reaches {r['reached']:.2f}x)"
                                    for r in ratios) + ".", ""]

    if not table:
        L += ["## Results", "", "No result rows with this setup yet.", ""]
    for arch in archs:
        keys = [k for k in table if k[0] == arch]
        if not keys:
            continue
        L += [f"## {arch}", ""]
        cols = sorted({(k[1], k[2]) for k in keys}, key=lambda mt: (mt[0] != "local", mt[1]))
        methods = sorted({m for k in keys for m in table[k]}, key=lambda m: (m not in ours, m == RANDOM, m))
        L += ["MACs / parameters kept (fraction of the base, mean over seeds):", "",
              "| method | " + " | ".join(f"{m} {t:g}x" for m, t in cols) + " |", "|---|" + "---|" * len(cols)]
        first = {(m, t): next(k for k in keys if k[1] == m and k[2] == t) for m, t in cols}
        for meth in methods:
            vals = []
            for col in cols:
                c = table[first[col]].get(meth)
                vals.append("–" if c is None else f"{c.macs_ratio:.3f} / {c.params_ratio:.3f}")
            L.append(f"| {'★ ' if meth in ours else ''}{meth} | " + " | ".join(vals) + " |")
        L.append("")
        for regime in regimes:
            rk = {(k[1], k[2]): k for k in keys if k[3] == regime}
            if not rk:
                continue
            L += [f"### {arch}, {regime} ({REGIME_TEXT.get(regime, regime)})", "",
                  "| method | " + " | ".join(f"{m} {t:g}x: top-1 | Δ vs best built-in [95 % CI]" for m, t in cols)
                  + " |", "|---|" + "---|" * (2 * len(cols))]
            refs = []
            for col in cols:
                k = rk.get(col)
                ref = None if k is None else next((c.reference for c in comps if c.key == k), None)
                refs += [f"reference: `{ref}`" if ref else "–", ""]
            L.append("| *best built-in* | " + " | ".join(refs) + " |")
            for meth in methods:
                vals = []
                for col in cols:
                    k = rk.get(col)
                    c: Cell | None = None if k is None else table[k].get(meth)
                    if c is None:
                        vals += ["–", "–"]
                        continue
                    comp = by.get((k, meth))
                    text = _fmt_ms(list(c.top1.values())) + (f" (n={len(c.top1)})" if len(c.top1) != len(cfg.seeds)
                                                             else "") + (" †" if c.stale else "")
                    rnd = comp.vs_random if comp is not None else None
                    if rnd is not None and rnd.low is not None and rnd.verdict != "better":
                        text += " ≤ rnd"
                    ref = "reference" if comp is not None and comp.reference == meth else _fmt_interval(comp)
                    vals += [text, ref]
                L.append(f"| {'★ ' if meth in ours else ''}{meth} | " + " | ".join(vals) + " |")
            L.append("")

    errors = Counter((r["arch"], r["method"], r["mode"], r["target"], (r.get("error") or "")[:90])
                     for r in cell_rows if r.get("top1") is None)
    if errors:
        L += ["## Errors", "", "| arch | method | mode | target | error | rows |", "|---|---|---|---|---|---|"]
        L += [f"| {a} | {m} | {mo} | {t:g}x | {e.replace('|', '/')} | {n} |" for (a, m, mo, t, e), n in
              sorted(errors.items())]
        L.append("")

    L += recovery_section(table, {(b["arch"], b["seed"]): b["top1"] for b in bases})
    L += calibration_section(rows, setup)
    L += pipeline_section(rows, setup, table, len(cfg.seeds), cfg.finetune_images)
    plots = _plots(table, archs, regimes, modes, comps, out, ours) if table else []
    if plots:
        L += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    L += ["## Which criterion should I use?", "",
          "Each sentence below is computed from the tables above (settings = arch x mode x target x regime).", ""]
    L += [f"* {s}" for s in _advice(table, comps, ours, regimes)] if table else ["* No results yet."]
    L.append("")
    page = out / "quality.md"
    page.write_text("\n".join(L))
    return page
