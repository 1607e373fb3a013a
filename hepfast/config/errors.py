"""ConfigError: the one error a configuration problem raises, naming the field."""
from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot be used. `path` is the field (no `$.`), `message` the why."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)
