"""Charts of the benchmark results: PNGs next to the JSON files.

    python tests/benchmarks/plot.py [--results-dir bench-results]

Reads ``point_reads.json`` and ``stream_rows.json`` (whichever exist) and writes
``point_reads.png`` and ``stream_rows.png`` beside them (matplotlib, Agg backend):

* ``point_reads.png``: for 1, 64 and 256 requests in flight, each client's throughput
  as a multiple of the raw driver's (``vs_driver``; the dots are the per-round ratios,
  when the file has them); CPU µs per request at 64 in flight; event-loop lag p99 at
  256 in flight (log scale; for the driver a thread's wake-up lag);
* ``stream_rows.png``: each client's streaming rate as a multiple of the raw driver's
  callback paging (dots: per-round ratios), and the lag p99 during the stream.

The dashed line at 1.0 is the raw driver. Titles carry the run's date and commit.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

TIMES = "\N{MULTIPLICATION SIGN}"
RESULTS_DIR = Path(__file__).resolve().parents[2] / "bench-results"
CONCURRENCY = (1, 64, 256)
BASELINE = "driver"
# One colour per client, the same in every chart; others get the cycle's next ones.
COLOURS = {
    "driver": "#7f7f7f",
    "driver/tuple": "#b0b0b0",
    "driver/sync": "#d0d0d0",
    "asyncio": "#1f77b4",
    "trio": "#2ca02c",
    "asyncio+loopio": "#17becf",
    "trio+loopio": "#98df8a",
    "asyncio+metrics": "#6baed6",
    "asyncio+otel": "#9ecae1",
    "v001": "#ff7f0e",
    "acsylla": "#d62728",
}
EXTRA_COLOURS = ("#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#393b79")


def colour(client: str, seen: dict[str, str]) -> str:
    if client in COLOURS:
        return COLOURS[client]
    if client not in seen:
        seen[client] = EXTRA_COLOURS[len(seen) % len(EXTRA_COLOURS)]
    return seen[client]


def subtitle(data: dict[str, Any]) -> str:
    meta = data.get("metadata", {})
    setup = data.get("setup", {})
    commit = (meta.get("git_commit") or "?")[:10]
    dirty = (meta.get("library_working_tree") or {}).get("uncommitted_changes")
    parts = [
        f"{meta.get('date_utc', '?')}",
        f"commit {commit}{' + uncommitted changes' if dirty else ''}",
        f"Python {meta.get('python', '?')}, cassandra-driver {meta.get('cassandra_driver', '?')}",
        f"{meta.get('usable_cores', '?')} cores",
    ]
    rounds = setup.get("rounds")
    if rounds is not None:
        parts.append(f"{rounds} round{'s' if rounds != 1 else ''}")
    if setup.get("quick"):
        parts.append("QUICK run")
    return ", ".join(parts)


def label_bars(
    ax: Axes,
    bars: Any,
    values: list[float | None],
    fmt: str,
    tops: list[float] | None = None,
) -> None:
    """Each bar's value over it (over ``tops``, the highest round dot, when given)."""
    tops = tops or [bar.get_height() for bar in bars]
    for bar, value, top in zip(bars, values, tops, strict=True):
        if value is None:
            continue
        ax.annotate(
            fmt.format(value),
            (bar.get_x() + bar.get_width() / 2, max(top, bar.get_height())),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=7,
        )


def round_dots(ax: Axes, x: float, rounds: list[float | None] | None) -> float:
    """Each round's ratio as a black dot on the bar (the bar is their median); the
    highest dot (0 if none)."""
    values = [value for value in rounds or () if value is not None]
    if len(values) > 1:
        ax.plot([x] * len(values), values, "o", color="black", markersize=2.5, zorder=3)
    return max(values, default=0.0)


def baseline_line(ax: Axes) -> None:
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, zorder=1)


def target_line(ax: Axes, y: float, label: str, right_edge: float) -> None:
    """A project target: a dotted green line at ``y``, labelled at the right edge."""
    ax.axhline(y, color="tab:green", linestyle=":", linewidth=1, zorder=1)
    ax.annotate(
        label,
        (right_edge, y),
        xytext=(0, 2),
        textcoords="offset points",
        ha="right",
        fontsize=7,
        color="tab:green",
        zorder=4,
        bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.8},
    )


def simple_bars(
    ax: Axes,
    clients: list[str],
    values: list[float | None],
    seen: dict[str, str],
    *,
    log: bool = False,
) -> Any:
    """Bars, one per client, in the clients' colours; returns them (for label_bars)."""
    heights = [value if value is not None else 0.0 for value in values]
    positive = [value for value in values if value]
    bars = ax.bar(
        range(len(clients)),
        heights,
        color=[colour(client, seen) for client in clients],
        edgecolor="black",
        linewidth=0.5,
        zorder=2,
    )
    ax.set_xticks(range(len(clients)))
    ax.set_xticklabels(clients, rotation=30, ha="right", fontsize=8)
    if log and positive:
        ax.set_yscale("log")
        ax.set_ylim(min(positive) / 3, max(positive) * 3)
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(axis="y", alpha=0.3, zorder=0)
    return bars


# --------------------------------------------------------------------- point reads


def plot_point_reads(data: dict[str, Any], out: Path) -> None:
    summary = [row for row in data.get("summary", []) if row.get("concurrency") in CONCURRENCY]
    clients: list[str] = []
    for row in summary:
        if row["client"] not in clients:
            clients.append(row["client"])
    by_key = {(row["client"], row["concurrency"]): row for row in summary}
    seen: dict[str, str] = {}

    figure = plt.figure(figsize=(13, 9.5), layout="constrained")
    grid = figure.add_gridspec(2, 2, height_ratios=(1.15, 1))
    ratio_ax = figure.add_subplot(grid[0, :])
    cpu_ax = figure.add_subplot(grid[1, 0])
    lag_ax = figure.add_subplot(grid[1, 1])

    width = 0.8 / max(1, len(clients))
    highest = 1.0
    for index, client in enumerate(clients):
        xs, values, rows = [], [], []
        for group, concurrency in enumerate(CONCURRENCY):
            row = by_key.get((client, concurrency))
            if row is None or row.get("vs_driver") is None:
                continue
            xs.append(group - 0.4 + width * (index + 0.5))
            values.append(row["vs_driver"])
            rows.append(row)
        if not xs:
            continue
        bars = ratio_ax.bar(
            xs,
            values,
            width * 0.92,
            color=colour(client, seen),
            edgecolor="black",
            linewidth=0.5,
            label=client,
            zorder=2,
        )
        tops = [
            round_dots(ratio_ax, x, row.get("vs_driver_rounds"))
            for x, row in zip(xs, rows, strict=True)
        ]
        label_bars(ratio_ax, bars, values, "{:.2f}", tops)
        highest = max(highest, *values, *tops)
    baseline_line(ratio_ax)
    ratio_ax.set_xticks(range(len(CONCURRENCY)))
    ratio_ax.set_xticklabels([f"{n} in flight" for n in CONCURRENCY])
    ratio_ax.set_ylabel(f"{TIMES} raw driver (ops/s ÷ driver's ops/s)")
    ratio_ax.set_ylim(0, highest * 1.22)  # room for the labels and the legend
    ratio_ax.grid(axis="y", alpha=0.3, zorder=0)
    ratio_ax.legend(fontsize=8, ncol=len(clients), loc="upper center")
    ratio_ax.set_title(
        f"Throughput as a multiple of the raw driver's callback API ({TIMES}raw; dashed line "
        "= 1.0 = the raw driver; bars: median of the rounds, dots: each round)",
        fontsize=10,
    )

    at_64 = [c for c in clients if (c, 64) in by_key]
    cpu = [by_key[(c, 64)].get("cpu_us_per_op") for c in at_64]
    label_bars(cpu_ax, simple_bars(cpu_ax, at_64, cpu, seen), cpu, "{:.0f}")
    cpu_ax.set_ylabel("client CPU µs per request")
    cpu_ax.set_title("Client CPU per request at 64 in flight (lower is better)", fontsize=10)

    at_256 = [c for c in clients if (c, 256) in by_key]
    lags = [by_key[(c, 256)].get("loop_lag_p99_ms") for c in at_256]
    label_bars(lag_ax, simple_bars(lag_ax, at_256, lags, seen, log=True), lags, "{:.1f}")
    lag_ax.set_ylabel("lag p99, ms (log scale)")
    lag_ax.set_title(
        "Event-loop lag p99 at 256 in flight (driver: a thread's wake-up lag)", fontsize=10
    )

    figure.suptitle(
        f"Prepared point reads: async clients vs the raw cassandra-driver\n{subtitle(data)}",
        fontsize=12,
    )
    figure.savefig(out, dpi=110)
    plt.close(figure)


# --------------------------------------------------------------------- stream rows


def plot_stream_rows(data: dict[str, Any], out: Path) -> None:
    summary = data.get("summary") or data.get("results") or []
    clients = [row.get("client") or row.get("label") for row in summary]
    vs = [row.get("vs_driver", row.get("vs_driver_same_fetch_size")) for row in summary]
    seen: dict[str, str] = {}
    setup = data.get("setup", {})

    figure, (ratio_ax, lag_ax) = plt.subplots(
        1, 2, figsize=(13, 5.5), layout="constrained", width_ratios=(1.4, 1)
    )
    bars = simple_bars(ratio_ax, clients, vs, seen)
    tops = [round_dots(ratio_ax, x, row.get("vs_driver_rounds")) for x, row in enumerate(summary)]
    label_bars(ratio_ax, bars, vs, "{:.2f}", tops)
    baseline_line(ratio_ax)
    target = (data.get("targets") or {}).get("speedup_vs_driver_at_least")
    if target:
        target_line(ratio_ax, target, f"target {target}{TIMES}", len(clients) - 0.5)
    ratio_ax.set_ylim(0, max(1.0, target or 0, *(v or 0 for v in vs), *tops) * 1.12)
    ratio_ax.set_ylabel(f"{TIMES} raw driver (rows/s ÷ driver's rows/s)")
    ratio_ax.set_title(
        f"Streaming rate as a multiple of the raw driver's callback paging ({TIMES}raw;\n"
        "dashed = 1.0 = driver; bars: median of per-round ratios, dots: each round)",
        fontsize=10,
    )

    lags = [row.get("lag_p99_ms") for row in summary]
    label_bars(lag_ax, simple_bars(lag_ax, clients, lags, seen, log=True), lags, "{:.1f}")
    lag_target = (data.get("targets") or {}).get("lag_p99_ms_below")
    if lag_target:
        bottom, top = lag_ax.get_ylim()
        lag_ax.set_ylim(min(bottom, lag_target / 2), max(top, lag_target * 2))
        target_line(lag_ax, lag_target, f"target < {lag_target:g} ms", len(clients) - 0.5)
    lag_ax.set_ylabel("lag p99, ms (log scale)")
    lag_ax.set_title(
        "Lag p99 of a 5 ms sleep during the stream\n(event loop; driver/*: a thread, no loop)",
        fontsize=10,
    )

    rows = setup.get("rows")
    fetch = setup.get("fetch_size")
    what = f"{rows:,} rows" if isinstance(rows, int) else "a table"
    if fetch:
        what += f" at fetch size {fetch}"
    figure.suptitle(f"Streaming {what}\n{subtitle(data)}", fontsize=12)
    figure.savefig(out, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS_DIR,
        help=f"where the JSON files are and the PNGs go (default {RESULTS_DIR})",
    )
    args = parser.parse_args()
    written = 0
    for name, plot in (("point_reads", plot_point_reads), ("stream_rows", plot_stream_rows)):
        source = args.results_dir / f"{name}.json"
        if not source.exists():
            print(f"no {source}: skipped")
            continue
        out = source.with_suffix(".png")
        plot(json.loads(source.read_text()), out)
        print(f"wrote {out}")
        written += 1
    if not written:
        raise SystemExit(f"no point_reads.json or stream_rows.json in {args.results_dir}")


if __name__ == "__main__":
    main()
