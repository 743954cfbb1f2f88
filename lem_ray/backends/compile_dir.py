"""A library's own compile cache directory as one compile-cache artifact: packed as a tar after
the engine compiled into it, unpacked into a fresh local directory before the next engine of
the same key starts. The library then finds its own cache there, complete, and never shares a
directory another engine is still writing."""

from __future__ import annotations

import io
import shutil
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path


class CompileDir:
    """One engine's local cache directory: made on first use, removed with the engine."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._path: Path | None = None

    @property
    def path(self) -> str:
        """The folder, made on first use so a backend that never compiles leaves none."""
        if self._path is None:
            self._path = Path(tempfile.mkdtemp(prefix=self._prefix))
        return str(self._path)

    def unpack(self, artifact: bytes) -> None:
        """The published directory, into this one (tar's data filter: no links out, no
        absolute paths, so a damaged or foreign archive cannot write elsewhere)."""
        with tarfile.open(fileobj=io.BytesIO(artifact), mode="r:*") as archive:
            archive.extractall(self.path, filter="data")

    def pack(self) -> bytes | None:
        """The directory as a tar; None when the library wrote nothing there."""
        if self._path is None or not any(self._path.iterdir()):
            return None
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w:gz") as archive:
            for item in sorted(self._path.iterdir()):
                archive.add(item, arcname=item.name)
        return out.getvalue()

    def remove(self) -> None:
        """Delete the folder (if it was made); the next `path` makes a fresh one."""
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)
            self._path = None


def installed_versions(*names: str) -> dict[str, str]:
    """Versions of the installed distributions among names, read without importing them."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found
