"""Progress bars: a step inside a step shares the live display (rich allows one live display at a time)."""

import io
import re

from rich.console import Console

from onnxbc.progress import Stages


def test_nested_steps_share_one_display():
    stages = Stages(enabled=True, console=Console(file=io.StringIO(), force_terminal=True))
    assert stages.enabled
    with stages.step("outer", 2) as outer:
        with stages.step("inner", 3) as inner:
            for _ in range(3):
                inner()
        outer()
        with stages.step("inner again", 1) as inner:
            inner()
        outer()
    with stages.step("after", 1) as advance:  # a new display once the first has closed
        advance()


def test_disabled_steps_do_nothing():
    stages = Stages(enabled=False)
    with stages.step("x", 1) as advance:
        advance()


def test_not_a_terminal_prints_one_line_when_a_step_starts_and_one_when_it_ends():
    log = io.StringIO()
    stages = Stages(enabled=True, console=Console(file=log, width=200))  # a file: no terminal
    with stages.step("Calibrating activation ranges", 3) as advance:
        assert log.getvalue() == "Calibrating activation ranges (3) ...\n"  # visible while a long step runs
        with stages.step("Solving", None):
            pass
        for _ in range(3):
            advance()
    lines = log.getvalue().splitlines()
    assert lines[1] == "  Solving ..."
    assert re.fullmatch(r"  Solving: done in \d+\.\d s", lines[2])
    assert re.fullmatch(r"Calibrating activation ranges: 3/3 done in \d+\.\d s", lines[3])
    assert len(lines) == 4


def test_quiet_prints_nothing():
    log = io.StringIO()
    stages = Stages(enabled=False, console=Console(file=log))
    with stages.step("x", 1) as advance:
        advance()
    assert log.getvalue() == ""
