"""Progress bars for long steps (rich), silent when not on a terminal or when asked to be quiet."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class Stages:
    """``with stages.step("Calibrating", total) as advance: ... advance()``."""

    def __init__(self, enabled: bool, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal

    @contextlib.contextmanager
    def step(self, description: str, total: int | None) -> Iterator[Callable[[], None]]:
        if not self.enabled:
            yield lambda: None
            return
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        with Progress(*columns, console=self.console, transient=True) as progress:
            task = progress.add_task(description, total=total)
            yield lambda: progress.advance(task)
