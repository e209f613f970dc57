"""Exceptions that speak to people: each says what was wrong, where, and what to do."""

from __future__ import annotations


class CgmedError(Exception):
    """Base class of every error cgmed raises on purpose."""


class ConfigError(CgmedError, ValueError):
    """A configuration value is wrong. Names the key and the fix."""

    def __init__(self, key: str, problem: str, fix: str | None = None):
        self.key = key
        msg = f"config key '{key}': {problem}"
        if fix:
            msg += f"\n  fix: {fix}"
        super().__init__(msg)


class DataError(CgmedError, ValueError):
    """A data file or record is wrong. Names the file (and record) and the fix."""

    def __init__(self, where: str, problem: str, fix: str | None = None):
        self.where = where
        msg = f"{where}: {problem}"
        if fix:
            msg += f"\n  fix: {fix}"
        super().__init__(msg)


class LeakageError(CgmedError):
    """Training data reaches a held-out target. Lists the offenders."""


class BadImageError(DataError):
    """An image file cannot be read or decoded (missing, truncated, not an image, too large).

    Training leaves such records out and counts them against ``train.max_bad_images``;
    evaluation stops on one, since a test set is scored whole.
    """
