"""The recovery section of ``docs/quality.md``: what the recovery step does without training and as a warm start,
computed from the cell rows (paired by base seed, 95 % intervals)."""

from __future__ import annotations

from .quality_stats import Cell, Interval, mean_std, paired_interval

#: the criterion the per-setting table follows (every method's verdicts are counted below it)
REFERENCE = "tp-magnitude-l2"
#: (what, regime a, regime b): the paired differences a - b the section reports
DIFFERENCES = (("recovery vs BatchNorm re-estimation, no training", "reconstruct", "bn"),
               ("recovery (no training) vs the short fine-tune", "reconstruct", "ft"),
               ("recovery + short fine-tune vs the short fine-tune alone", "reconstruct+ft", "ft"))
REGIMES = ("none", "bn", "reconstruct", "ft", "reconstruct+ft")


def _pair(a: Cell | None, b: Cell | None) -> Interval | None:
    if a is None or b is None:
        return None
    seeds = sorted(set(a.top1) & set(b.top1))
    return paired_interval([a.top1[s] for s in seeds], [b.top1[s] for s in seeds]) if seeds else None


def _fmt(iv: Interval | None) -> str:
    if iv is None:
        return "–"
    if iv.low is None:
        return f"{iv.mean:+.2f} (1 seed)"
    return f"{iv.mean:+.2f} [{iv.low:+.2f}, {iv.high:+.2f}] {iv.verdict}"


def _gap(iv: Interval | None) -> str:
    if iv is None:
        return "–"
    return f"{iv.mean:+.2f}" + ("" if iv.low is None else f" [{iv.low:+.2f}, {iv.high:+.2f}]")


def _within(gap: Interval | None, pp: float = 1.0) -> str:
    """Is ``reconstruct`` within ``pp`` of the base? yes (the whole interval of base − reconstruct is at most pp),
    no (the whole interval is above it), open (the interval straddles it)."""
    if gap is None or gap.low is None:
        return "–"
    return "yes" if gap.high <= pp else "no" if gap.low > pp else "open"


def _ms(values: list[float]) -> str:
    m, s = mean_std(values)
    return f"{m:.2f}" if len(values) == 1 else f"{m:.2f} ± {s:.2f}"


def recovery_section(table: dict[tuple, dict[str, Cell]], base_top1: dict[tuple[str, int], float]) -> list[str]:
    """Markdown lines: per (arch, mode, target) the reference criterion's top-1 in each regime beside the base, the
    base minus ``reconstruct`` gap and the paired differences of :data:`DIFFERENCES`; then, over every method and
    setting, how often each difference is better / tie / worse. ``base_top1``: ``{(arch, seed): top-1}``."""
    settings = sorted({k[:3] for k in table if k[3] in REGIMES}, key=lambda k: (k[0], k[1] != "local", k[2]))
    if not any((*s, "reconstruct") in table for s in settings):
        return []
    L = ["## Recovery without training", "",
         f"`{REFERENCE}` in every regime (test top-1, mean ± std over base seeds), the gap of `reconstruct` to the "
         "unpruned base (base − reconstruct, paired by seed; *within 1 pp*: yes where its whole interval is at most "
         "1 pp, no where it is all above, open otherwise), and paired differences between regimes with their 95 % "
         "intervals.", "",
         "| arch | mode | target | base | " + " | ".join(f"`{r}`" for r in REGIMES)
         + " | base − reconstruct | within 1 pp | " + " | ".join(d[0] for d in DIFFERENCES) + " |",
         "|---|---|---|---|" + "---|" * (len(REGIMES) + 2 + len(DIFFERENCES))]
    for arch, mode, target in settings:
        cells = {r: table.get((arch, mode, target, r), {}).get(REFERENCE) for r in REGIMES}
        rec = cells["reconstruct"]
        seeds = sorted(rec.top1) if rec is not None else []
        bases = [base_top1[(arch, s)] for s in seeds if (arch, s) in base_top1]
        gap = (paired_interval(bases, [rec.top1[s] for s in seeds]) if rec is not None and len(bases) == len(seeds)
               and seeds else None)
        vals = ["–" if c is None else _ms(list(c.top1.values())) for c in cells.values()]
        diffs = [_fmt(_pair(cells[a], cells[b])) for _, a, b in DIFFERENCES]
        L.append(f"| {arch} | {mode} | {target:g}x | {_ms(bases) if bases else '–'} | " + " | ".join(vals)
                 + f" | {_gap(gap)} | {_within(gap)} | " + " | ".join(diffs) + " |")
    L += ["", "Over every method (criterion) and setting with at least two seeds:", ""]
    for what, a, b in DIFFERENCES:
        verdicts = []
        for arch, mode, target in settings:
            left, right = table.get((arch, mode, target, a), {}), table.get((arch, mode, target, b), {})
            for method in sorted(set(left) & set(right)):
                iv = _pair(left[method], right[method])
                if iv is not None and iv.low is not None:
                    verdicts.append(iv)
        if verdicts:
            n = {v: sum(iv.verdict == v for iv in verdicts) for v in ("better", "tie", "worse")}
            mean = sum(iv.mean for iv in verdicts) / len(verdicts)
            L.append(f"* {what} (`{a}` − `{b}`): better in {n['better']}, tie in {n['tie']}, worse in {n['worse']} "
                     f"of {len(verdicts)} (method, setting) pairs; mean difference {mean:+.2f} pp.")
        else:
            L.append(f"* {what}: no (method, setting) pair has two seeds yet.")
    return L + [""]
