"""Errors a user can act on: the CLI prints them on one line and exits 2."""

from __future__ import annotations


class ConfigError(Exception):
    """Bad input: names the file and the key path so the user can find it."""

    def __init__(self, message: str, *, path: str | None = None, file: str | None = None) -> None:
        self.message = message
        self.path = path
        self.file = file
        super().__init__(str(self))

    def with_file(self, file: str) -> ConfigError:
        """The same error, naming `file` unless it names one already."""
        return ConfigError(self.message, path=self.path, file=self.file or file)

    def __str__(self) -> str:
        where = ": ".join(_short(p) for p in (self.file, self.path) if p)
        text = f"{where}: {self.message}" if where else self.message
        return " ".join(text.splitlines())


def _short(text: str, limit: int = 200) -> str:
    """A path as long as the user made it would push the reason off the line."""
    return text if len(text) <= limit else f"{text[:limit - 60]}...{text[-40:]}"
