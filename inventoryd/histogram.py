"""A histogram in plain integers: what the metrics count on the hot path (the event loop is its
only writer, so no locks), turned into a Prometheus family when scraped."""

from __future__ import annotations

from bisect import bisect_left


class Histogram:
    """Observations counted per bucket (the last one is +Inf) and summed."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # Bucket i counts values <= bounds[i]: the first bound not below the value.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        buckets: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            total += count
            buckets.append((bound, total))
        return buckets
