"""Progress of long CLI work (indexing, judging, evaluating): count/total, rate and time left.

On a terminal it is a live rich bar. Elsewhere (a log file, CI, a pipe) a live bar prints nothing
useful, so a plain line is printed every PLAIN_EVERY_S seconds, from a thread of its own so that a
step that takes minutes still shows it is alive, and once at the end.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

PLAIN_EVERY_S = 10.0


class _Rate(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.1f} {self.unit}/s" if task.speed else f"- {self.unit}/s", style="progress.data.speed")


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class ProgressReport:
    """`with ProgressReport(console, "indexing corpus.jsonl", total, "docs") as progress: progress.advance(n)`;
    `progress.describe("...")` names the step under way when the work has steps of different kinds."""

    def __init__(self, console: Console, description: str, total: int | None, unit: str, every_s: float = PLAIN_EVERY_S):
        self.console = console
        self.description = description
        self.total = total
        self.unit = unit
        self.every_s = every_s
        self.done = 0
        self._started = time.monotonic()
        self._live: Progress | None = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> ProgressReport:
        self._started = time.monotonic()
        if self.console.is_terminal:
            self._live = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(self.unit),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=False,
            )
            self._live.start()
            self._task = self._live.add_task(self.description, total=self.total)
        else:
            self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
            self._ticker.start()
        return self

    def advance(self, count: int = 1) -> None:
        self.done += count
        if self._live is not None:
            self._live.advance(self._task, count)

    def describe(self, description: str) -> None:
        self.description = description
        if self._live is not None:
            self._live.update(self._task, description=description)

    def _tick(self) -> None:
        while not self._stop.wait(self.every_s):
            self._print_line()

    def line(self) -> str:
        """The plain progress line: count/total, rate and, with a total, the time left."""
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rate = self.done / elapsed
        count = f"{self.done}/{self.total}" if self.total is not None else str(self.done)
        line = f"{self.description}: {count} {self.unit}, "
        if self.done:
            # Slow work (a benchmark's steps of minutes) reads better as time per item than as 0.0/s.
            line += f"{rate:.1f} {self.unit}/s, " if rate >= 0.1 else f"{_duration(elapsed / self.done)} each, "
        line += f"{_duration(elapsed)} elapsed"
        if self.total is not None and rate > 0 and self.done < self.total:
            line += f", ETA {_duration((self.total - self.done) / rate)}"
        return line

    def _print_line(self) -> None:
        self.console.print(self.line(), highlight=False, soft_wrap=True)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        if self._live is not None:
            self._live.stop()
        else:
            self._stop.set()
            if self._ticker is not None:
                self._ticker.join()
            self._print_line()
