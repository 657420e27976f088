"""A long stage's progress as plain lines with the time spent and an ETA: `step 300/2000 D=1.21, 12.3 s elapsed,
ETA 57 s`.
One line per update rather than a terminal bar, because DVC pipes the stages' output into its log, where a bar's
carriage returns turn into noise; the same lines read well on a terminal and in a test.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import TextIO


def duration(seconds: float, digits: int = 1) -> str:
    """12.3 s, 4 min 05 s, 2 h 10 min."""
    if seconds < 60:
        return f"{seconds:.{digits}f} s"
    s = round(seconds)
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _value(v: object) -> str:
    return f"{float(v):.4g}" if not isinstance(v, str) else v  # float() also reads a 0-d tensor


class Progress:
    """`total` units of work from `start` (a resumed run's first step); the ETA assumes the rate so far holds.

    `update` prints when the count reaches the next of about `lines` evenly spaced marks, and at the end; `line`
    formats one without printing, for callers that keep their own schedule (the train loop's ticks).
    """

    def __init__(self, label: str, total: int, start: int = 0, lines: int = 10, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.label, self.total, self.start, self.stream, self.clock = label, total, start, stream, clock
        self.every = max(1, math.ceil((total - start) / max(lines, 1)))
        self._next = start + self.every
        self._t0 = clock()

    def line(self, done: int, **fields: object) -> str:
        elapsed = self.clock() - self._t0
        rate = (done - self.start) / elapsed if elapsed > 0 else 0.0
        eta = duration((self.total - done) / rate, digits=0) if rate > 0 else "unknown"
        head = " ".join([f"{self.label} {done}/{self.total}", *(f"{k}={_value(v)}" for k, v in fields.items())])
        return f"{head}, {duration(elapsed)} elapsed, ETA {eta}"

    def update(self, done: int, **fields: object) -> None:
        if done < self._next and done < self.total:
            return
        self._next = done - (done - self.start) % self.every + self.every
        print(self.line(done, **fields), file=self.stream or sys.stdout, flush=True)  # flush: DVC reads a pipe
