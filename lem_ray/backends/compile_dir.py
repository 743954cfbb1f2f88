"""A library's own compile cache directory, or a saved engine, as one compile-cache artifact:
packed as a tar after the engine compiled into it (in memory for a small cache, into a file
for an engine), unpacked into a fresh local directory before the next engine of the same key
starts. The library then finds its own cache there, complete, and never shares a directory
another engine is still writing."""

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

    def unpack_file(self, path: str) -> None:
        """As unpack, from a local tar file, read as it is extracted."""
        with tarfile.open(path, mode="r:*") as archive:
            archive.extractall(self.path, filter="data")

    def pack(self) -> bytes | None:
        """The directory as a compressed tar; None when the library wrote nothing there."""
        folder = self._written()
        if folder is None:
            return None
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w:gz") as archive:
            _add(archive, folder)
        return out.getvalue()

    def pack_file(self, path: str) -> str | None:
        """The directory as an uncompressed tar written to `path`, file by file (a TensorRT
        engine is most of a model's size: compressing it would take minutes and gain little);
        the path, or None when the library wrote nothing here."""
        folder = self._written()
        if folder is None:
            return None
        with tarfile.open(path, mode="w") as archive:
            _add(archive, folder)
        return path

    def _written(self) -> Path | None:
        """The folder, when the library wrote something in it."""
        return self._path if self._path is not None and any(self._path.iterdir()) else None

    def remove(self) -> None:
        """Delete the folder (if it was made); the next `path` makes a fresh one."""
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)
            self._path = None


def _add(archive: tarfile.TarFile, folder: Path) -> None:
    for item in sorted(folder.iterdir()):
        archive.add(item, arcname=item.name)


def installed_versions(*names: str) -> dict[str, str]:
    """Versions of the installed distributions among names, read without importing them."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found
