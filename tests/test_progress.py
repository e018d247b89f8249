"""Progress bars: a step inside a step shares the live display (rich allows one live display at a time)."""

import io

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
