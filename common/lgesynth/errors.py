"""User-facing errors: they name the file and the problem, and say what to do."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A problem with a user's input file (unreadable, wrong shape, label values, NaN, ...).

    The message always starts with the offending path so that a user can find the file.
    """

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
