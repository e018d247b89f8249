"""Progress of long steps: rich bars on a terminal, one plain line when a step starts and one when it ends
otherwise (CI logs), nothing when asked to be quiet."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class Stages:
    """``with stages.step("Calibrating", total) as advance: ... advance()``."""

    def __init__(self, enabled: bool, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self._live: Progress | None = None  # a step within a step adds its bar to the live display
        self._depth = 0  # plain lines of a step within a step are indented

    @contextlib.contextmanager
    def step(self, description: str, total: int | None) -> Iterator[Callable[[], None]]:
        if not self.enabled:
            yield lambda: None
        elif not self.console.is_terminal:
            with self._plain(description, total) as advance:
                yield advance
        elif self._live is not None:
            progress = self._live
            task = progress.add_task(description, total=total)
            try:
                yield lambda: progress.advance(task)
            finally:
                progress.remove_task(task)
        else:
            columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
            with Progress(*columns, console=self.console, transient=True) as progress:
                self._live = progress
                try:
                    task = progress.add_task(description, total=total)
                    yield lambda: progress.advance(task)
                finally:
                    self._live = None

    @contextlib.contextmanager
    def _plain(self, description: str, total: int | None) -> Iterator[Callable[[], None]]:
        """``Calibrating (12) ...`` when the step starts, ``Calibrating: 12/12 done in 3.1 s`` when it ends."""
        indent = "  " * self._depth
        done = 0

        def advance() -> None:
            nonlocal done
            done += 1

        self._print(f"{indent}{description}{'' if total is None else f' ({total})'} ...")
        start = time.perf_counter()
        self._depth += 1
        try:
            yield advance
        finally:
            self._depth -= 1
        count = "" if total is None else f" {done}/{total}"
        self._print(f"{indent}{description}:{count} done in {time.perf_counter() - start:.1f} s")

    def _print(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)
