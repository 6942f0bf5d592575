"""Long work shows that it is alive and how long it has left, on stderr: the progress report. The
`irgate bench` runs that test_judge_api.py and test_cli.py check also check its lines on stderr, and
that --json keeps stdout to the one JSON object."""

from __future__ import annotations

import io
import time
from pathlib import Path

from rich.console import Console

from irgate.progress import ProgressReport


def test_without_a_terminal_a_line_is_printed_while_a_long_step_runs(tmp_path: Path) -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False)
    with ProgressReport(console, "bench judge", 4, "steps", every_s=0.05) as progress:
        progress.describe("bench judge: a step of minutes")
        progress.advance()
        # Nothing advances here, as during one long step: the lines still come.
        deadline = time.monotonic() + 10
        while out.getvalue().count("\n") < 2:
            assert time.monotonic() < deadline, f"no progress lines within 10 s while a step ran: {out.getvalue()!r}"
            time.sleep(0.05)
        progress.describe("bench judge")
        progress.advance(3)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("bench judge: a step of minutes: 1/4 steps, ") and ", ETA " in lines[0]
    assert lines[-1].startswith("bench judge: 4/4 steps, ") and "ETA" not in lines[-1]


def test_slow_items_read_as_time_each_rather_than_a_rate_of_zero() -> None:
    report = ProgressReport(Console(file=io.StringIO()), "bench judge", 3, "steps")
    report.done = 1
    report._started = time.monotonic() - 120  # one step took two minutes
    assert report.line().startswith("bench judge: 1/3 steps, 2m00s each, 2m00s elapsed, ETA 4m00s")


def test_before_the_first_item_the_line_has_no_rate_yet() -> None:
    report = ProgressReport(Console(file=io.StringIO()), "bench judge: loading both models", 5, "steps")
    report._started = time.monotonic() - 30
    assert report.line() == "bench judge: loading both models: 0/5 steps, 30s elapsed"
