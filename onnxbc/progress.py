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
        self._live: Progress | None = None  # a step within a step adds its bar to the live display

    @contextlib.contextmanager
    def step(self, description: str, total: int | None) -> Iterator[Callable[[], None]]:
        if not self.enabled:
            yield lambda: None
            return
        if self._live is not None:
            progress = self._live
            task = progress.add_task(description, total=total)
            try:
                yield lambda: progress.advance(task)
            finally:
                progress.remove_task(task)
            return
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        with Progress(*columns, console=self.console, transient=True) as progress:
            self._live = progress
            try:
                task = progress.add_task(description, total=total)
                yield lambda: progress.advance(task)
            finally:
                self._live = None
