"""The table (console and Markdown), ``results.md`` and the throughput plot."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.perf.loads import Sample
from tests.perf.scenarios import DIRECT_OF, Role, Scenario, Surface

Results = Mapping[Scenario, Sequence[Sample]]
SATURATED_PCT = 85.0  # of one core: a single event loop (or a client thread) is near its limit
BUSY_OTHERS_PCT = 50.0  # of one core, used by processes outside the benchmark


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[Sample], float]
    digits: int


COLUMNS = (
    Column("rt/s", lambda s: s.rate, 0),
    Column("p50 ms", lambda s: s.p50_ms, 2),
    Column("p99 ms", lambda s: s.p99_ms, 2),
    Column("max ms", lambda s: s.max_ms, 1),
    Column("gw CPU s", lambda s: s.cpu("gateway"), 2),
    Column("be CPU s", lambda s: s.cpu("backend"), 2),
    Column("client CPU s", lambda s: s.cpu("client"), 2),
    Column("gw µs/msg", lambda s: s.cpu_us_per_message("gateway"), 0),
    Column("other %", lambda s: s.other_pct(), 0),
)
RATIOS = ("rt/s ÷direct", "p50 ÷direct", "rt/s ÷peer", "p50 ÷peer", "gw µs ÷peer")


def num(value: float, digits: int) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def median(samples: Sequence[Sample], value: Callable[[Sample], float]) -> float:
    known = [v for v in (value(s) for s in samples) if not math.isnan(v)]
    return statistics.median(known) if known else math.nan


def spread(samples: Sequence[Sample], column: Column) -> str:
    known = [v for v in (column.value(s) for s in samples) if not math.isnan(v)]
    if len(known) < 2:
        return ""
    return f"{num(min(known), column.digits)}-{num(max(known), column.digits)}"


def baseline(results: Results, scenario: Scenario, role: Role) -> Scenario | None:
    """The direct or peer row this gateway row is compared with (same path kind and C)."""
    if scenario.role not in (Role.GATEWAY, Role.FLOOR):
        return None
    path = DIRECT_OF.get(scenario.path) if role is Role.DIRECT else scenario.path
    return next(
        (
            s
            for s in results
            if s.role is role
            and s.path is path
            and s.concurrency == scenario.concurrency
            and s.note == scenario.note
            and results[s]
        ),
        None,
    )


def ratio(
    results: Results, scenario: Scenario, base: Scenario | None, value: Callable[[Sample], float]
) -> str:
    if base is None or not results[scenario]:
        return ""
    mine, theirs = median(results[scenario], value), median(results[base], value)
    if math.isnan(mine) or math.isnan(theirs) or theirs == 0:
        return ""
    return f"{mine / theirs:.2f}x"


def saturation(samples: Sequence[Sample]) -> str:
    """Processes near one full core: where the limit probably is."""
    if not samples:
        return ""
    marks = []
    for process in ("gateway", "backend", "client"):
        pct = median(samples, lambda s, p=process: s.cpu_pct(p))  # type: ignore[misc]
        if not math.isnan(pct) and pct >= SATURATED_PCT:
            marks.append(f"{process} {pct:.0f}%")
    return ", ".join(marks)


def rows(results: Results) -> list[list[str]]:
    """Header, then per path a title row, then two rows per scenario: median, min-max."""
    out = [["system", "C", "runs", "err", *(c.header for c in COLUMNS), *RATIOS, "busy (% core)"]]
    for path in Surface:
        scenarios = [s for s in results if s.path is path]
        if not scenarios:
            continue
        out.append([f"[{path.value}]", *[""] * (len(out[0]) - 1)])
        for sc in scenarios:
            samples = results[sc]
            direct = baseline(results, sc, Role.DIRECT)
            peer = baseline(results, sc, Role.PEER)
            errors = sum(s.errors for s in samples)
            out.append(
                [
                    sc.system,
                    str(sc.concurrency),
                    str(len(samples)),
                    str(errors),
                    *(num(median(samples, c.value), c.digits) for c in COLUMNS),
                    ratio(results, sc, direct, lambda s: s.rate),
                    ratio(results, sc, direct, lambda s: s.p50_ms),
                    ratio(results, sc, peer, lambda s: s.rate),
                    ratio(results, sc, peer, lambda s: s.p50_ms),
                    ratio(results, sc, peer, lambda s: s.cpu_us_per_message("gateway")),
                    saturation(samples),
                ]
            )
            out.append(
                ["", "", "", "", *(spread(samples, c) for c in COLUMNS), *[""] * (len(RATIOS) + 1)]
            )
    return out


def first_token_rows(results: Results) -> list[list[str]]:
    """Time from the back-end's first delta to the client, and what the gateway adds to it
    (its median over the direct one's at the same concurrency)."""
    out = [["path", "system", "C", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms"]]

    def first(samples: Sequence[Sample], key: str) -> float:
        return median(samples, lambda s: s.extra.get(key, math.nan))

    for sc, samples in results.items():
        p50, p99 = first(samples, "ttft_p50_ms"), first(samples, "ttft_p99_ms")
        if math.isnan(p50):
            continue
        direct = baseline(results, sc, Role.DIRECT)
        added = ["", ""]
        if direct is not None:
            added = [
                num(p50 - first(results[direct], "ttft_p50_ms"), 2),
                num(p99 - first(results[direct], "ttft_p99_ms"), 2),
            ]
        out.append(
            [
                sc.path.value.split(" (")[0],
                sc.system,
                str(sc.concurrency),
                num(p50, 2),
                num(p99, 2),
                *added,
            ]
        )
    return out


def console_table(table: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(row[i]) for row in table if not row[0].startswith("["))
        for i in range(len(table[0]))
    ]
    lines = []
    for row in table:
        if row[0].startswith("["):
            lines.append(row[0])
            continue
        lines.append(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    return "\n".join(lines)


def markdown_table(table: Sequence[Sequence[str]]) -> str:
    header, *body = table
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in body:
        if row[0].startswith("["):
            lines.append(f"| **{row[0][1:-1]}** |" + " |" * (len(row) - 1))
        else:
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(results: Results, out: Path) -> str:
    """Throughput against concurrency, one panel per path; '' or why there is no plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    # The direct rows appear in the panels of the paths they are the baseline of; a fan-out
    # row has one concurrency only.
    plotted = [p for p in Surface if p not in (Surface.DIRECT, Surface.SSE)]
    paths = [p for p in plotted if any(s.path is p for s in results)]
    cols = min(3, len(paths)) or 1
    rows_n = math.ceil(len(paths) / cols) or 1
    fig, axes = plt.subplots(rows_n, cols, figsize=(5.5 * cols, 4 * rows_n), squeeze=False)
    for ax, path in zip(axes.flat, paths, strict=False):
        shown = [path, DIRECT_OF.get(path, path)]
        notes = {sc.note for sc in results if sc.path is path}
        systems: dict[str, list[Scenario]] = {}
        for sc in results:
            if sc.path in shown and sc.note in notes and results[sc]:
                name = sc.system if sc.path is path else f"direct ({sc.system})"
                systems.setdefault(name, []).append(sc)
        for name, scs in systems.items():
            scs.sort(key=lambda s: s.concurrency)
            xs = [s.concurrency for s in scs]
            ys = [median(results[s], lambda x: x.rate) for s in scs]
            lows = [min(x.rate for x in results[s]) for s in scs]
            highs = [max(x.rate for x in results[s]) for s in scs]
            err = [
                [y - lo for y, lo in zip(ys, lows, strict=True)],
                [hi - y for y, hi in zip(ys, highs, strict=True)],
            ]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name)
        ax.set_title(path.value, fontsize=9)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("concurrency (clients, connections or streams)")
        ax.set_ylabel("round trips / s (median, min-max)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(paths) :]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return ""


def bottleneck_line(results: Results) -> str:
    """Where the limit probably was in the gateway rows, and how busy the machine was."""
    gateway_rows = [(sc, r) for sc, r in results.items() if sc.role is Role.GATEWAY and r]
    busiest: dict[str, list[str]] = {}
    for sc, samples in gateway_rows:
        pct = {
            p: median(samples, lambda s, p=p: s.cpu_pct(p))  # type: ignore[misc]
            for p in ("gateway", "backend", "client")
        }
        known = {p: v for p, v in pct.items() if not math.isnan(v)}
        if known:
            top = max(known, key=known.__getitem__)
            busiest.setdefault(top, []).append(f"{sc.path.value}, {sc.system}, C={sc.concurrency}")
    if not busiest:
        return ""
    line = (
        f"Busiest process of the {len(gateway_rows)} Dialog Gateway rows: the gateway in "
        f"{len(busiest.get('gateway', []))}"
    )
    for process in ("backend", "client"):
        if busiest.get(process):
            line += f"; the {process} in {'; '.join(busiest[process])}"
    others = [median(r, lambda s: s.other_pct()) for _, r in results.items() if r]
    busy = sum(1 for o in others if o >= BUSY_OTHERS_PCT)
    cores = os.cpu_count() or 1
    line += (
        ". The gateway is one asyncio event loop: near 100% of one core, it is the limit."
        f" Other processes used {BUSY_OTHERS_PCT:.0f}% of a core or more (of {cores * 100}%)"
        f" in {busy} of {len(others)} rows (other %): compare the ratios measured in the same"
        " run rather than the absolute figures."
    )
    return line
