"""The cost model, fitted from the log itself: per-op overhead and achieved bandwidth.

Every op that ran and declared the bytes it reads and writes is a sample
``duration = overhead + bytes / bandwidth``; a streaming least-squares fit
(Welford's updates, constant memory) gives both. The gap a serial queue leaves
between one op's end and the next op's start while that next op was already
waiting is the runtime's dispatch cost; its median is added to the overhead
each launch saved avoids. A fusion that saves ``B`` bytes of intermediate
traffic and ``L`` launches is estimated to save
``L * (overhead + dispatch_gap) + B / bandwidth`` µs.
"""

from __future__ import annotations

import random

__all__ = ["CostModel", "Fit"]

_RESERVOIR = 4096
#: Least factor between the largest and smallest op that lets a fit separate overhead and rate.
SPREAD = 4.0
#: Ops that all move less than this are overhead-bound: their times say nothing about bandwidth.
SMALL_OP_BYTES = 64 * 1024


class Fit:
    """The fitted model: ``overhead_us``, ``dispatch_gap_us``, ``bandwidth`` (bytes/µs or None)."""

    __slots__ = ("overhead_us", "dispatch_gap_us", "bandwidth", "samples", "method")

    def __init__(self, overhead_us, dispatch_gap_us, bandwidth, samples, method):
        self.overhead_us = overhead_us
        self.dispatch_gap_us = dispatch_gap_us
        self.bandwidth = bandwidth
        self.samples = samples
        self.method = method

    @property
    def per_launch_us(self) -> float:
        """What one launch fewer saves: fixed per-op cost plus dispatch gap."""
        return self.overhead_us + self.dispatch_gap_us

    def saved_us(self, saved_bytes: float, launches: float) -> float:
        """Estimated µs saved by not moving ``saved_bytes`` and not launching ``launches`` ops."""
        t = launches * self.per_launch_us
        if self.bandwidth:
            t += saved_bytes / self.bandwidth
        return t

    def as_dict(self) -> dict:
        """JSON-ready form (bandwidth in GB/s)."""
        return {"overhead_us": round(self.overhead_us, 3),
                "dispatch_gap_us": round(self.dispatch_gap_us, 3),
                "bandwidth_gb_s": None if not self.bandwidth else round(self.bandwidth / 1e3, 3),
                "samples": self.samples, "method": self.method}


class CostModel:
    """Accumulates samples in constant memory; :meth:`fit` returns a :class:`Fit`."""

    def __init__(self, seed: int = 0):
        self.n = 0
        self.mean_x = 0.0
        self.mean_y = 0.0
        self.m2_x = 0.0
        self.m2_y = 0.0
        self.c_xy = 0.0
        self.sum_x = 0.0
        self.sum_y = 0.0
        self.sum_xx = 0.0
        self.sum_xy = 0.0
        self.min_x = float("inf")
        self.max_x = 0.0
        self.gaps: list = []
        self.ngaps = 0
        self.samples: list = []        # reservoir of (bytes, µs) for the robust fit
        self._rng = random.Random(seed)

    def observe(self, nbytes: float, dur_us: float) -> None:
        """Add one op that moved ``nbytes`` in ``dur_us`` (ignored unless both positive)."""
        if nbytes <= 0 or dur_us < 0:
            return
        self.n += 1
        dx = nbytes - self.mean_x
        self.mean_x += dx / self.n
        dy = dur_us - self.mean_y
        self.mean_y += dy / self.n
        self.m2_x += dx * (nbytes - self.mean_x)
        self.m2_y += dy * (dur_us - self.mean_y)
        self.c_xy += dx * (dur_us - self.mean_y)
        self.sum_x += nbytes
        self.sum_y += dur_us
        self.sum_xx += float(nbytes) * nbytes
        self.sum_xy += float(nbytes) * dur_us
        self.min_x = min(self.min_x, nbytes)
        self.max_x = max(self.max_x, nbytes)
        if len(self.samples) < _RESERVOIR:
            self.samples.append((nbytes, dur_us))
        else:
            j = self._rng.randrange(self.n)
            if j < _RESERVOIR:
                self.samples[j] = (nbytes, dur_us)

    def observe_gap(self, gap_us: float) -> None:
        """Add one dispatch gap (next op already queued when the previous one ended)."""
        if gap_us < 0:
            return
        self.ngaps += 1
        if len(self.gaps) < _RESERVOIR:
            self.gaps.append(gap_us)
        else:
            j = self._rng.randrange(self.ngaps)
            if j < _RESERVOIR:
                self.gaps[j] = gap_us

    def fit(self) -> Fit:
        """Least-squares overhead and bandwidth; falls back when the data cannot separate them.

        Methods: ``median`` (at least 16 samples spanning :data:`SPREAD` x: bandwidth the median rate of the
        larger half of the ops, overhead the median of what that rate leaves
        unexplained — robust to a few ops slowed by compilation or contention);
        ``least-squares`` (when op sizes span at least :data:`SPREAD` x, or the line
        explains almost all the variance: noisy ops of nearby sizes cannot
        separate a fixed cost from a rate); ``through-origin`` (the intercept came out
        negative, so overhead 0 and bandwidth from ``Σxy/Σxx``); ``mean-rate``
        (sizes too alike: bandwidth ``Σbytes/Σtime``, overhead 0);
        ``overhead-only`` (sizes too alike and every op moved less than
        :data:`SMALL_OP_BYTES`: overhead the median duration, bandwidth unknown);
        ``none`` (no samples).
        """
        gap = sorted(self.gaps)[len(self.gaps) // 2] if self.gaps else 0.0
        if self.n == 0:
            return Fit(0.0, gap, None, 0, "none")
        robust = self._robust_fit(gap)
        if robust is not None:
            return robust
        if self.n >= 2 and self.m2_x > 0 and (self.max_x >= SPREAD * self.min_x or self._r2() > 0.99):
            slope = self.c_xy / self.m2_x
            if slope > 0:
                intercept = self.mean_y - slope * self.mean_x
                if intercept >= 0:
                    return Fit(intercept, gap, 1.0 / slope, self.n, "least-squares")
                if self.sum_xy > 0:
                    return Fit(0.0, gap, self.sum_xx / self.sum_xy, self.n, "through-origin")
        if self.max_x < SMALL_OP_BYTES:
            durations = sorted(d for _, d in self.samples)
            return Fit(durations[len(durations) // 2], gap, None, self.n, "overhead-only")
        bw = self.sum_x / self.sum_y if self.sum_y > 0 else None
        return Fit(0.0, gap, bw, self.n, "mean-rate")

    def _r2(self) -> float:
        if self.m2_x <= 0 or self.m2_y <= 0:
            return 0.0
        return self.c_xy * self.c_xy / (self.m2_x * self.m2_y)

    def _robust_fit(self, gap: float) -> Fit | None:
        samples = [s for s in self.samples if s[1] > 0]
        if len(samples) < 16 or self.max_x < SPREAD * self.min_x:
            return None     # (ops of one size cannot tell a fixed cost from a rate)
        samples.sort()
        big = samples[len(samples) // 2:]
        rates = sorted(b / d for b, d in big)
        bandwidth = rates[len(rates) // 2]
        rest = sorted(max(0.0, d - b / bandwidth) for b, d in samples)
        return Fit(rest[len(rest) // 2], gap, bandwidth, self.n, "median")
