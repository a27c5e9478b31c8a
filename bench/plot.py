"""PNG plots of the benchmark results: one figure per metric, a line (or box) per series.

    .venv/bin/python bench/plot.py [JSON ...] [--out DIR]

Without JSON arguments: every `bench/results/*.json`. Each PNG is written next to its JSON (or
into `--out`) as `<json stem>-<metric>.png`. What each kind of result gives:

- `ads_push` (`bench/ads_push.py`): `init` (initial convergence), `push` (per proxy: first, p50,
  p99 and last, medians over pushes), `cpu` (server CPU per proxy per push), `rss` (server RSS
  after the last push), and `bytes` (response bytes per proxy per push) when the rows have it;
  x is N (proxies), a series per transport / client / protocol / workers.
- `translate` (`bench/translate.py`): `bookinfo` (one route edit, and the full translation, vs
  proxies), `full` (full translation vs services) and `change` (one VirtualService and one
  endpoint change vs services), with the issue's goals the JSON holds.
- `envoys` (`bench/envoys.py`): `flips` (every Envoy's time per flip, a box per flip) and
  `per-envoy` (each Envoy's times over the flips, a box per Envoy).

Any other JSON (`summary.json`, unknown shapes) is skipped with a message. matplotlib is an
optional extra (`pip install -e '.[plots]'`), imported only when plotting; figures are drawn on
the Agg canvas (no display needed).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["Chart", "charts", "main", "plot", "require_matplotlib"]

RESULTS = Path(__file__).resolve().parent / "results"
INSTALL = "bench/plot.py needs matplotlib, an optional extra: pip install -e '.[plots]'"
LOG_SPAN = 10  # a log axis when the values span more than this factor
# ads_push's per-proxy push times, medians over pushes: (row key, label, line style, marker).
PUSH_QUANTILES = (
    ("proxy_first_median_s", "first", ":", "v"),
    ("proxy_p50_median_s", "p50", "-.", "s"),
    ("proxy_p99_median_s", "p99", "--", "^"),
    ("push_median_s", "last", "-", "o"),
)


class ShapeError(ValueError):
    """The JSON is not a result this module knows how to plot."""


@dataclass
class Line:
    """One series of (x, y) points."""

    label: str
    x: list[float]
    y: list[float]
    style: str = "-"
    marker: str = "o"
    color: str | None = None  # a matplotlib colour ("C0"); None: the next in the cycle


@dataclass
class Goal:
    """A reference figure: a horizontal line at `y`, or a single point when `x` is given."""

    label: str
    y: float
    x: float | None = None


@dataclass
class Chart:
    """One figure: lines over a numeric x, or boxes (one per label) when `boxes` is set."""

    name: str  # the PNG is `<json stem>-<name>.png`
    title: str
    xlabel: str
    ylabel: str
    lines: list[Line] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    boxes: list[tuple[str, list[float]]] = field(default_factory=list)


# --- what to plot: JSON -> charts (no matplotlib) ------------------------------------------


def _ads_push(document: dict[str, Any], source: str) -> list[Chart]:
    rows = document["results"]
    if not isinstance(rows, list) or not rows:
        raise ShapeError("no rows in 'results'")
    series: dict[tuple[str, str, str, int], list[dict[str, Any]]] = {}
    for row in rows:
        # Older rows lack what was not a choice yet: the proxies were grpc.aio clients (before
        # --client-impl), one server process (--workers), state-of-the-world (--protocol).
        key = (
            row["transport"],
            row.get("client_impl") or "grpc",
            row.get("protocol") or "sotw",
            row.get("workers") or 1,
        )
        series.setdefault(key, []).append(row)
    for group in series.values():
        group.sort(key=lambda row: float(row["clients"]))
    first = rows[0]
    setting = (
        f"{first['clusters']} clusters x {first['endpoints']} endpoints, "
        f"--change {first.get('change', 'all')}"
    )

    def label(key: tuple[str, str, str, int]) -> str:
        transport, client, protocol, workers = key
        return f"{transport} server, {client} client, {protocol}, {workers}W"

    def lines(metric: str, scale: float = 1.0) -> list[Line]:
        out = []
        for key, group in series.items():
            points = [(r["clients"], r[metric]) for r in group if r.get(metric) is not None]
            if points:
                out.append(
                    Line(
                        label(key),
                        [float(x) for x, _ in points],
                        [float(y) * scale for _, y in points],
                    )
                )
        return out

    def chart(name: str, what: str, ylabel: str, chart_lines: list[Line]) -> Chart:
        return Chart(
            name, f"{source}: {what}\n{setting}", "N (simulated proxies)", ylabel, chart_lines
        )

    push_lines = []
    for number, (key, group) in enumerate(series.items()):
        for metric, quantile, style, marker in PUSH_QUANTILES:
            points = [(r["clients"], r[metric]) for r in group if r.get(metric) is not None]
            if points:
                push_lines.append(
                    Line(
                        f"{label(key)}: {quantile}",
                        [float(x) for x, _ in points],
                        [float(y) for _, y in points],
                        style,
                        marker,
                        f"C{number % 10}",
                    )
                )
    result = [
        chart("init", "initial convergence (every proxy ACKed all four types)", "s",
              lines("initial_s")),
        chart("push", "push, until the first / p50 / p99 / last proxy held it (medians)", "s",
              push_lines),
        chart("cpu", "server CPU per proxy per push (median)", "ms",
              lines("server_cpu_ms_per_client_push")),
        chart("rss", "server RSS after the last push (all workers)", "MB",
              lines("server_rss_mb")),
    ]  # fmt: skip
    bytes_lines = lines("bytes_per_client_push")
    if bytes_lines:  # rows from before the byte counts have none
        result.append(chart("bytes", "response bytes per proxy per push (median)", "bytes",
                            bytes_lines))  # fmt: skip
    # The JSON holds no reference figures (the 10,000-proxy goal is in the README).
    if not any(c.lines for c in result):
        raise ShapeError("rows have none of the plotted metrics")
    return [c for c in result if c.lines]


def _translate(document: dict[str, Any], source: str) -> list[Chart]:
    result = []
    bookinfo = document.get("rows") or []
    if bookinfo:
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in bookinfo:
            distinct = row["shapes"] == row["proxies"]
            name = "a shape per proxy" if distinct else f"{row['shapes']} shapes"
            groups.setdefault(name, []).append(row)
        chart = Chart(
            "bookinfo",
            f"{source}: bookinfo, one route edit (solid) and a full translation (dashed)",
            "proxies",
            "ms",
        )
        for number, (name, group) in enumerate(groups.items()):
            group.sort(key=lambda row: float(row["proxies"]))
            x = [float(row["proxies"]) for row in group]
            color = f"C{number % 10}"
            chart.lines.append(
                Line(f"{name}: edit", x, [row["edit_s"] * 1000 for row in group], "-", "o", color)
            )
            chart.lines.append(
                Line(f"{name}: full", x, [row["full_s"] * 1000 for row in group], "--", "s", color)
            )
        result.append(chart)
    synthetic = document.get("synthetic") or {}
    rows = sorted(synthetic.get("rows") or [], key=lambda row: float(row["services"]))
    if rows:
        goals = synthetic.get("goals") or {}
        services = [float(row["services"]) for row in rows]
        full = Chart(
            "full",
            f"{source}: synthetic mesh, full translation",
            "services",
            "s",
            [Line("full translation", services, [row["full_s"] for row in rows])],
        )
        if goals.get("full_translation_s") is not None and goals.get("services") is not None:
            full.goals.append(
                Goal(
                    f"goal: ≤ {goals['full_translation_s']:g} s at {goals['services']:,} services",
                    goals["full_translation_s"],
                    goals["services"],
                )
            )
        change = Chart(
            "change",
            f"{source}: synthetic mesh, one change (store update + flush)",
            "services",
            "ms",
            [
                Line(
                    "VirtualService change",
                    services,
                    [row["route_change"]["total_s"] * 1000 for row in rows],
                ),
                Line(
                    "endpoint change",
                    services,
                    [row["endpoint_change"]["total_s"] * 1000 for row in rows],
                    "--",
                    "s",
                ),
            ],
        )
        if goals.get("one_change_s") is not None:
            change.goals.append(
                Goal(f"goal: ≤ {goals['one_change_s'] * 1000:g} ms", goals["one_change_s"] * 1000)
            )
        result += [full, change]
    if not result:
        raise ShapeError("neither bookinfo 'rows' nor 'synthetic' rows")
    return result


def _envoys(document: dict[str, Any], source: str) -> list[Chart]:
    flips = document["result"]["flips"]
    if not isinstance(flips, list) or not flips:
        raise ShapeError("no flips in 'result'")
    envoys = max(len(flip["envoy_ms"]) for flip in flips)
    per_flip = Chart(
        "flips",
        f"{source}: {envoys} Envoys, file replaced until each routes to the new colour",
        "flip",
        "ms",
    )
    per_envoy = Chart(
        "per-envoy",
        f"{source}: each Envoy's route flip times over {len(flips)} flips",
        "Envoy",
        "ms",
    )
    for number, flip in enumerate(flips, 1):
        times = [float(t) for t in flip["envoy_ms"] if t is not None]  # None: not converged
        missed = len(flip["envoy_ms"]) - len(times)
        per_flip.boxes.append(
            (f"{number} {flip['colour']}" + (f"\n{missed} missed" if missed else ""), times)
        )
    for envoy in range(envoys):
        times = [
            float(flip["envoy_ms"][envoy])
            for flip in flips
            if envoy < len(flip["envoy_ms"]) and flip["envoy_ms"][envoy] is not None
        ]
        per_envoy.boxes.append((str(envoy + 1), times))
    return [per_flip, per_envoy]


KINDS: dict[str, Callable[[dict[str, Any], str], list[Chart]]] = {
    "ads_push": _ads_push,
    "translate": _translate,
    "envoys": _envoys,
}


def charts(document: object, source: str = "") -> list[Chart]:
    """The charts for one result document; ShapeError if it is not one this module knows."""
    if not isinstance(document, dict):
        raise ShapeError(f"not a JSON object but {type(document).__name__}")
    kind = document.get("benchmark")
    if kind not in KINDS:
        raise ShapeError(f"'benchmark' is {kind!r}, not one of {', '.join(KINDS)}")
    try:
        return KINDS[kind](document, source)
    except ShapeError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as error:  # a field missing or odd
        raise ShapeError(f"an unexpected {kind} result ({type(error).__name__}: {error})") from None


# --- drawing (matplotlib) -------------------------------------------------------------------


def require_matplotlib() -> None:
    """Exit with how to install matplotlib if it is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit(INSTALL) from None


def _spans(values: Sequence[float]) -> bool:
    positive = [v for v in values if v > 0]
    return len(positive) == len(values) > 1 and max(positive) > LOG_SPAN * min(positive)


def _log_label(value: float, _position: float) -> str:
    """A log axis tick as a plain number; of the minor ticks only 2x and 5x a power of ten."""
    if value <= 0:
        return ""
    leading = round(value / 10 ** math.floor(math.log10(value) + 1e-9))
    return f"{value:g}" if leading in (1, 2, 5) else ""


def _draw_lines(ax: Axes, chart: Chart) -> None:
    from matplotlib.ticker import FuncFormatter, NullFormatter

    for line in chart.lines:
        ax.plot(
            line.x,
            line.y,
            linestyle=line.style,
            marker=line.marker,
            color=line.color,
            label=line.label,
        )
    for goal in chart.goals:
        if goal.x is None:
            ax.axhline(goal.y, color="red", linestyle="--", linewidth=1, label=goal.label)
        else:
            ax.plot([goal.x], [goal.y], linestyle="none", marker="*", markersize=12,
                    color="red", label=goal.label)  # fmt: skip
    goal_xs = {goal.x for goal in chart.goals if goal.x is not None}
    xs = sorted({x for line in chart.lines for x in line.x} | goal_xs)
    ys = [y for line in chart.lines for y in line.y] + [g.y for g in chart.goals]
    if _spans(xs):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    if _spans(ys):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(_log_label))
        ax.yaxis.set_minor_formatter(FuncFormatter(_log_label))
    elif ys and min(ys) >= 0:
        ax.set_ylim(bottom=0)  # differences at their true size
    if len(xs) <= 12:  # the measured N (or services, proxies) themselves, not 10^k
        ax.set_xticks(xs, [f"{x:,.0f}" for x in xs])
    if len(xs) == 1:
        ax.set_xlim(xs[0] * 0.8, xs[0] * 1.2)
    if len(chart.lines) + len(chart.goals) > 4:  # beside the plot, not over the points
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    else:
        ax.legend(fontsize="small")


def _draw_boxes(ax: Axes, chart: Chart) -> None:
    labels = [label for label, _ in chart.boxes]
    values = [times for _, times in chart.boxes]
    ax.boxplot(values, whis=(0, 100))  # whiskers: the fastest and the slowest
    for position, times in enumerate(values, 1):
        ax.plot([position] * len(times), times, linestyle="none", marker=".", alpha=0.4,
                color="C0")  # fmt: skip
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize="small")


def _save(chart: Chart, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    wide = len(chart.lines) + len(chart.goals) > 4  # room for the legend beside the plot
    figure = Figure(figsize=(11 if wide else 8, 5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)  # the Agg canvas: no display, no pyplot state
    ax = figure.add_subplot()
    if chart.boxes:
        _draw_boxes(ax, chart)
    else:
        _draw_lines(ax, chart)
    ax.set_title(chart.title, fontsize="medium")
    ax.set_xlabel(chart.xlabel)
    ax.set_ylabel(chart.ylabel)
    ax.grid(True, which="major", alpha=0.3)
    figure.savefig(path, format="png")


def plot(path: Path, out_dir: Path) -> list[Path]:
    """Write the PNGs for one result JSON into `out_dir`; the paths written ([] if skipped)."""
    require_matplotlib()
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        planned = charts(document, path.name)
    except (json.JSONDecodeError, UnicodeDecodeError, ShapeError) as error:
        print(f"skipped {path}: {error}", file=sys.stderr)
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for chart in planned:
        png = out_dir / f"{path.stem}-{chart.name}.png"
        _save(chart, png)
        written.append(png)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Plot each JSON given (default: every bench/results/*.json); 1 if one was unreadable."""
    parser = argparse.ArgumentParser(
        prog="bench/plot.py", description=__doc__.split("\n\n", maxsplit=1)[0]
    )
    parser.add_argument(
        "json", nargs="*", type=Path, help="result files (default: bench/results/*.json)"
    )
    parser.add_argument("--out", type=Path, help="directory for the PNGs (default: by each JSON)")
    args = parser.parse_args(argv)
    require_matplotlib()
    paths: list[Path] = args.json or sorted(RESULTS.glob("*.json"))
    status = 0
    for path in paths:
        try:
            written = plot(path, args.out or path.parent)
        except OSError as error:
            print(f"{path}: {error}", file=sys.stderr)
            status = 1
            continue
        for png in written:
            print(f"wrote {png}")
    return status


if __name__ == "__main__":
    sys.exit(main())
