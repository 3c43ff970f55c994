"""Writing files so that a user never finds half of one: every file ctsdg writes (images, checkpoints,
weights, exports, reports, manifests) goes to a temporary file in the same folder first and is renamed
over the target only when complete. A crash, a kill or a full disk leaves the old file or none, never a
truncated one, and the temporary file is removed."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp", fsync: bool = False,
                make_parents: bool = False) -> Iterator[str]:
    """Yield a temporary path beside ``path``; write it inside the ``with`` block.

    On success the file gets the permissions of an ordinary new file (0666 minus the umask; ``mkstemp``
    would leave 0600), is optionally flushed to disk (``fsync``, for checkpoints that must survive a
    power cut) and replaces ``path`` in one rename. On any exception the temporary file is deleted and
    the exception propagates.

    Args:
        suffix: of the temporary name (some writers pick the format from it).
        make_parents: create missing folders; otherwise a missing folder is a FileNotFoundError
            that names it.
    """
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.parent.is_dir():
        raise FileNotFoundError(f"folder {path.parent} does not exist; create it first (mkdir -p {path.parent})")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        if fsync:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, make_parents: bool = True) -> Path:
    """``Path(path).write_bytes(data)``, atomically (:func:`atomic_path`)."""
    with atomic_path(path, make_parents=make_parents) as tmp:
        Path(tmp).write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str, *, make_parents: bool = True) -> Path:
    """``Path(path).write_text(text)`` (UTF-8), atomically (:func:`atomic_path`)."""
    return write_bytes_atomic(path, text.encode("utf-8"), make_parents=make_parents)


def check_writable_folder(folder: str | os.PathLike, flag: str, *, create: bool = False) -> None:
    """Refuse now, in one line naming the folder and the option to change, an output folder that a later
    atomic write would fail in (with the name of its hidden temporary file, perhaps minutes of work later).
    A probe file is made in the folder and removed at once. With ``create`` the folder is made first;
    without, a folder that does not exist yet is judged by the nearest one above it that does, and nothing
    is created.

    Raises:
        NotADirectoryError: the nearest existing path is a file.
        PermissionError (or another OSError): the folder cannot be made or written.
    """
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"{flag} {folder}: {existing} is a file; pass a folder")
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
            existing = folder
        fd, probe = tempfile.mkstemp(prefix=".ctsdg-write-probe.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or str(exc)).lower()
        raise type(exc)(f"cannot write to {existing}: {reason}; choose another {flag}") from None
