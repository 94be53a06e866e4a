"""ConfigError: the one exception for bad input (a config value, a spec key, a path).

Its `key` names the offending field or path and its message says what is
allowed; the CLI prints `error: <key>: <message>` and exits with code 2.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """A bad config value. `key` names the offending field (or path)."""

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")

    def __reduce__(self):  # picklable, so Ray can carry it from a worker to the driver
        return (ConfigError, (self.key, self.message))
