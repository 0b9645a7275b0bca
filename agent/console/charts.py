"""Small bar charts drawn as inline SVG on the server: no chart library in the browser, and a
template shows one with a loop over its bars."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

WIDTH = 300
"""The viewBox's width; the SVG scales to its box (a phone's narrow column too)."""
HEIGHT = 60


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    tip: str
    """The bucket's time and value, shown on hover (an SVG <title>)."""


@dataclass(frozen=True)
class Chart:
    title: str
    headline: str
    """The whole window in one figure, shown above the bars."""
    bars: list[Bar]
    peak: str
    """The tallest bar's value: the chart's scale."""
    first: str
    last: str
    """Times of the first and last bucket, under the chart."""
    width: int = WIDTH
    height: int = HEIGHT


def bar_chart(
    title: str,
    headline: str,
    values: Sequence[float],
    times: Sequence[str],
    show: Callable[[float], str],
) -> Chart:
    """One bar per value, scaled to the largest; `show` writes a value for people."""
    peak = max(values, default=0.0)
    step = WIDTH / max(len(values), 1)
    bars = []
    for index, (value, time) in enumerate(zip(values, times, strict=True)):
        height = HEIGHT * value / peak if peak else 0.0
        bars.append(
            Bar(
                x=round(index * step, 2),
                y=round(HEIGHT - height, 2),
                width=round(max(step - 1, 0.5), 2),
                height=round(height, 2),
                tip=f"{time}：{show(value)}",
            )
        )
    return Chart(
        title,
        headline,
        bars,
        peak=show(peak),
        first=times[0] if times else "",
        last=times[-1] if times else "",
    )
