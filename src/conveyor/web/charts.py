"""Inline SVG charts, rendered on the server: no chart library, no JavaScript.

Each function returns markup safe to embed (every text is escaped), with
``role="img"``, an ``aria-label`` summarising the data and a ``<title>`` per mark
so the figure behind each bar can be read by hovering or by a screen reader.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from html import escape

from markupsafe import Markup

from conveyor.core.states import BuildState
from conveyor.store.dashboard import RecentBuild, TrendPoint
from conveyor.store.pools import ScalingDecisionRecord

STATE_CLASS = {
    BuildState.SUCCEEDED: "ok",
    BuildState.FAILED: "bad",
    BuildState.TIMED_OUT: "bad",
    BuildState.LOST: "bad",
    BuildState.CANCELLED: "muted",
}


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def sparkline(recent: Sequence[RecentBuild], width: int = 120, height: int = 24) -> Markup:
    """One bar per build, oldest left: height is the duration, colour the result."""
    items = list(reversed(recent))
    if not items:
        return Markup('<span class="muted">no builds</span>')
    longest = max((b.duration_seconds or 0.0) for b in items) or 1.0
    # Slots for a full history (20 builds), newest at the right edge, so bars of
    # jobs with few builds look like those of the others.
    slot = width / max(len(items), 20)
    left = width - slot * len(items)
    bars = []
    for i, b in enumerate(items):
        h = max(2.0, (b.duration_seconds or 0.0) / longest * (height - 2))
        cls = STATE_CLASS.get(b.state, "active")
        title = f"#{b.number} {b.state.value} {human_duration(b.duration_seconds)}"
        bars.append(
            f'<rect class="{cls}" x="{left + i * slot + 1:.1f}" y="{height - h:.1f}" '
            f'width="{max(slot - 2, 1):.1f}" height="{h:.1f}"><title>{escape(title)}</title></rect>'
        )
    label = f"last {len(items)} builds, longest {human_duration(longest)}"
    return Markup(
        f'<svg class="spark" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(label)}">{"".join(bars)}</svg>'
    )


def _axis_label(point: TrendPoint, hourly: bool) -> str:
    return point.start.strftime("%H:00" if hourly else "%a %d")


def success_chart(points: Sequence[TrendPoint], hourly: bool, title: str) -> Markup:
    """Success rate per bucket as bars (grey where nothing finished)."""
    width, height, top = 480, 140, 10
    plot = height - 30
    slot = width / max(len(points), 1)
    total = sum(p.total for p in points)
    ok = sum(p.succeeded for p in points)
    overall = f"{ok / total:.0%}" if total else "no builds"
    marks = []
    for i, p in enumerate(points):
        x = i * slot + 1
        when = _axis_label(p, hourly)
        if p.total == 0:
            marks.append(_rect("none", x, top + plot - 2, slot - 2, 2, f"{when}: no builds"))
        else:
            rate = p.succeeded / p.total
            h = max(2.0, rate * plot)
            cls = "ok" if rate >= 0.9 else ("warn" if rate >= 0.5 else "bad")
            tip = f"{when}: {rate:.0%} of {p.total} builds succeeded"
            marks.append(_rect(cls, x, top + plot - h, slot - 2, h, tip))
    marks.extend(_x_labels(points, slot, height, hourly))
    label = f"{title}: {overall} succeeded ({total} builds)"
    return _frame(width, height, label, marks)


def duration_chart(points: Sequence[TrendPoint], hourly: bool, title: str) -> Markup:
    """Mean build duration per bucket as a line with a dot per bucket that had builds."""
    width, height, top = 480, 140, 10
    plot = height - 30
    slot = width / max(len(points), 1)
    means = [p.mean_seconds for p in points if p.mean_seconds is not None]
    longest = max(means) if means else 1.0
    marks = [
        f'<text class="axis" x="2" y="{top + 8}">{escape(human_duration(longest))}</text>',
        f'<line class="grid" x1="0" x2="{width}" y1="{top}" y2="{top}"/>',
    ]
    coords = []
    for i, p in enumerate(points):
        if p.mean_seconds is None:
            continue
        x = i * slot + slot / 2
        y = top + plot - (p.mean_seconds / longest) * plot if longest else top + plot
        coords.append(f"{x:.1f},{y:.1f}")
        tip = f"{_axis_label(p, hourly)}: mean {human_duration(p.mean_seconds)} ({p.total} builds)"
        marks.append(
            f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="3">'
            f"<title>{escape(tip)}</title></circle>"
        )
    if len(coords) > 1:
        marks.insert(0, f'<polyline class="line" points="{" ".join(coords)}"/>')
    marks.extend(_x_labels(points, slot, height, hourly))
    summary = f"mean up to {human_duration(longest)}" if means else "no finished builds"
    return _frame(width, height, f"{title}: {summary}", marks)


def _rect(cls: str, x: float, y: float, width: float, height: float, tip: str) -> str:
    return (
        f'<rect class="{cls}" x="{x:.1f}" y="{y:.1f}" width="{max(width, 1.0):.1f}" '
        f'height="{height:.1f}"><title>{escape(tip)}</title></rect>'
    )


def _x_labels(points: Sequence[TrendPoint], slot: float, height: int, hourly: bool) -> list[str]:
    every = max(1, len(points) // 6)
    labels = []
    for i, p in enumerate(points):
        if i % every == 0:
            labels.append(
                f'<text class="axis" x="{i * slot + 1:.1f}" y="{height - 4}">'
                f"{escape(_axis_label(p, hourly))}</text>"
            )
    return labels


def _frame(width: int, height: int, label: str, marks: list[str]) -> Markup:
    return Markup(
        f'<svg class="chart" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(label)}"><title>{escape(label)}</title>'
        f"{''.join(marks)}</svg>"
    )


def figure(name: str, value: object) -> str:
    """An agent's heartbeat figure for people: bytes in KiB…TiB, fractions rounded."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if name.endswith(("bytes", "_total")) or ("memory" in name and value > 1024):
        amount = float(value)
        for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
            if amount < 1024 or unit == "TiB":
                return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
            amount /= 1024
    if isinstance(value, float):
        return f"{value:.2f}"
    return f"{value:,}"


def pool_size_chart(
    decisions: Sequence[ScalingDecisionRecord],
    size_now: int,
    now: datetime,
    hours: int = 6,
) -> Markup:
    """A pool's size over the last ``hours``, as a step line drawn from its recorded
    decisions (each moves the size from ``current`` to ``target`` at ``at``), with the
    bounds in force (dashed: max), a dot per decision whose title is its reason, and
    the builds waiting for the pool at each decision (a second step line, where the
    decisions recorded it). ``decisions`` in any order; ``size_now`` ends the line."""
    width, height, top, left = 480, 150, 12, 26
    plot_h, plot_w = height - 34, width - left - 6
    start = now - timedelta(hours=hours)
    ordered = sorted(decisions, key=lambda d: (d.at, d.id))
    before = [d for d in ordered if d.at < start]
    shown = [d for d in ordered if start <= d.at <= now]
    size = before[-1].target if before else (shown[0].current if shown else size_now)
    waits = [(d.at, d.waiting) for d in shown if d.waiting is not None]
    top_value = max(
        [size, size_now, 1, *(d.target for d in shown), *(d.current for d in shown)]
        + [d.max_size for d in [*before[-1:], *shown]]
        + [w for _, w in waits]
    )

    def x(at: datetime) -> float:
        return left + (at - start).total_seconds() / (hours * 3600) * plot_w

    def y(value: float) -> float:
        return top + plot_h - value / top_value * plot_h

    points = [(x(start), y(size))]
    bounds = [(x(start), y(before[-1].max_size))] if before else []
    dots = []
    for d in shown:
        px = x(d.at)
        points += [(px, points[-1][1]), (px, y(d.current)), (px, y(d.target))]
        if bounds:
            bounds.append((px, bounds[-1][1]))
        bounds.append((px, y(d.max_size)))
        tip = f"{d.at:%H:%M:%S} {d.reason}"
        dots.append(
            f'<circle class="dot" cx="{px:.1f}" cy="{y(d.target):.1f}" r="3">'
            f"<title>{escape(tip)}</title></circle>"
        )
    points += [(x(now), points[-1][1]), (x(now), y(size_now))]
    if bounds:
        bounds.append((x(now), bounds[-1][1]))
    marks = [
        f'<line class="grid" x1="{left}" x2="{width}" y1="{y(top_value):.1f}" '
        f'y2="{y(top_value):.1f}"/>',
        f'<text class="axis" x="2" y="{y(top_value) + 4:.1f}">{top_value}</text>',
        f'<text class="axis" x="2" y="{y(0):.1f}">0</text>',
        f'<line class="grid" x1="{left}" x2="{width}" y1="{y(0):.1f}" y2="{y(0):.1f}"/>',
    ]
    if bounds:
        coords = " ".join(f"{px:.1f},{py:.1f}" for px, py in bounds)
        marks.append(f'<polyline class="bound" points="{coords}"><title>max</title></polyline>')
    if waits:
        steps: list[tuple[float, float]] = []
        for at, count in waits:
            if steps:
                steps.append((x(at), steps[-1][1]))
            steps.append((x(at), y(count)))
        steps.append((x(now), steps[-1][1]))
        coords = " ".join(f"{px:.1f},{py:.1f}" for px, py in steps)
        most = max(w for _, w in waits)
        marks.append(
            f'<polyline class="waiting" points="{coords}">'
            f"<title>builds waiting for the pool (up to {most})</title></polyline>"
        )
    coords = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
    marks.append(f'<polyline class="line" points="{coords}"/>')
    marks.extend(dots)
    for i in range(hours + 1):
        if i % max(1, hours // 6) == 0:
            at = start + timedelta(hours=i)
            anchor = "start" if i == 0 else ("end" if i == hours else "middle")
            marks.append(
                f'<text class="axis" x="{x(at):.1f}" y="{height - 4}" '
                f'text-anchor="{anchor}">{at:%H:%M}</text>'
            )
    waited = f", up to {max(w for _, w in waits)} builds waiting" if waits else ""
    label = (
        f"Pool size, last {hours} hours: {size_now} agents now, "
        f"{len(shown)} scaling decisions{waited}, at most {top_value}"
    )
    return _frame(width, height, label, marks)
