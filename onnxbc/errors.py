"""Errors with exit codes: the CLI prints one line for each and exits with ``exit_code``."""

from __future__ import annotations


class OnnxbcError(Exception):
    """The model or its data cannot be processed, or the result fails a check (exit code 1)."""

    exit_code = 1


class UsageError(OnnxbcError):
    """Bad options, or files that cannot be read (exit code 2)."""

    exit_code = 2
