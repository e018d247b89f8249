"""Errors with exit codes: the CLI prints one line for each and exits with ``exit_code``."""

from __future__ import annotations

import os


class OnnxbcError(Exception):
    """The model or its data cannot be processed, or the result fails a check (exit code 1)."""

    exit_code = 1


class UsageError(OnnxbcError):
    """Bad options, or files that cannot be read (exit code 2)."""

    exit_code = 2


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception's message folded onto one line (checker and runtime messages span several)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def display_path(path: str | os.PathLike) -> str:
    """A path as printable text: bytes that are not UTF-8 (surrogates in ``str``) shown as ``\\xff``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
