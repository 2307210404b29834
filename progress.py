"""Progress of long steps, also when nobody watches a terminal (cron, nohup, cluster job logs).

On a terminal a tqdm bar runs on stderr. Otherwise the step logs an INFO line each time another `fraction` of
the work is done, at most once per `min_interval_s` (and once at the end): how far, the step's latest figures,
the rate and the time left. A run log receives those lines either way.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from typing import Literal

from tqdm import tqdm

Mode = Literal["bar", "log", "off"]


@dataclass(frozen=True)
class ProgressStyle:
    """How long steps report progress: `bar` (terminal), `log` (INFO lines) or `off`."""

    mode: Mode = "log"
    fraction: float = 0.1
    min_interval_s: float = 5.0

    @classmethod
    def for_console(cls, quiet: bool = False, min_interval_s: float = 5.0) -> ProgressStyle:
        """A bar when stderr is a terminal (and not --quiet); log lines otherwise."""
        return cls("bar" if sys.stderr.isatty() and not quiet else "log", min_interval_s=min_interval_s)


NO_PROGRESS = ProgressStyle("off")


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
        if seconds >= 60
        else f"{seconds}s"
    )


class Progress:
    """`with Progress(total, "optimizing rates", "step", style, logger) as progress: progress.advance()`."""

    def __init__(
        self, total: int, what: str, unit: str, style: ProgressStyle, logger: logging.Logger, initial: int = 0
    ):
        self.total, self.what, self.unit, self.style, self.logger = total, what, unit, style, logger
        self.done = self.start = initial
        self.figures: dict[str, str] = {}
        self.started = self.last_line = time.monotonic()
        self.last_reported = initial
        self.next_boundary = self._boundary_after(initial)
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=what,
            unit=unit,
            file=sys.stderr,
            dynamic_ncols=True,
            disable=style.mode != "bar",
        )

    def _boundary_after(self, done: int) -> int:
        step = max(1, math.ceil(self.total * self.style.fraction))
        return (done // step + 1) * step

    def show(self, **figures: str) -> None:
        """The step's latest figures (already formatted), shown with the bar or in the next line."""
        self.figures = figures
        self.bar.set_postfix(figures, refresh=False)

    def advance(self, steps: int = 1) -> None:
        self.done += steps
        self.bar.update(steps)
        if self.style.mode != "log" or self.done < self.next_boundary:
            return
        self.next_boundary = self._boundary_after(self.done)
        if time.monotonic() - self.last_line >= self.style.min_interval_s or self.done >= self.total:
            self._line()

    def _line(self) -> None:
        now = time.monotonic()
        rate = (self.done - self.start) / max(now - self.started, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 else math.inf
        figures = "".join(f", {name} {value}" for name, value in self.figures.items())
        self.logger.info(
            "%s: %d/%d %ss (%.0f %%)%s, %.3g %ss/s, %s left",
            self.what,
            self.done,
            self.total,
            self.unit,
            100 * self.done / max(self.total, 1),
            figures,
            rate,
            self.unit,
            _duration(left),
        )
        self.last_line, self.last_reported = now, self.done

    def close(self) -> None:
        """End the bar; without a terminal, a last line for work done since the previous one."""
        self.bar.close()
        if self.style.mode == "log" and self.done > self.last_reported:
            self._line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
