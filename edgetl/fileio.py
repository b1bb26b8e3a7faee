"""Atomic file writes: a crash or a full disk never leaves a half-written artifact behind."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from .errors import ArtifactError, EdgetlError, UsageError


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_read_umask()  # what open() would give; mkstemp alone makes 0600


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through ``write(fileobj)`` to a temporary file in the same folder, fsync, rename.

    The previous file at ``path`` stays intact until the rename, so readers only ever
    see the old or the new complete file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), _FILE_MODE)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _unlink_quietly(tmp)
        raise _write_error(path, e) from e
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(path.parent)


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Fill a temporary sibling folder (yielded) and rename it to ``path`` only once complete.

    A full disk, an error or Ctrl-C part way leaves nothing at ``path`` (a rerun is then not refused
    for a half-written folder); ``path`` may exist only as an empty folder, which is replaced.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        tmp.chmod(0o777 & ~_read_umask())
    except OSError as e:
        raise _write_error(path, e) from e
    try:
        yield tmp
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        os.rename(tmp, path)
    except OSError as e:
        raise _write_error(path, e) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(path.parent)


def _write_error(path: Path, e: OSError) -> EdgetlError:
    kept = "the previous version is unchanged" if path.exists() else "nothing was written"
    return EdgetlError(f"{path}: cannot write ({e.strerror or e}); {kept}")


def is_inside(path: Path, root: Path) -> bool:
    """Whether ``path`` is ``root`` or below it, lexically (`Path.is_relative_to` is Python 3.9+)."""
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def resolve_inside(root: Path, rel: str, what: str = "path", error: type[EdgetlError] = ArtifactError) -> Path:
    """``root / rel`` for a path read from a manifest or a list file, refused unless it stays in ``root``.

    Absolute paths, ``..`` and symlinks whose real path leaves ``root`` are all refused: a file
    from elsewhere must not make edgetl read (or overwrite) anything outside its own folder.
    """
    root = Path(root)
    if not isinstance(rel, str) or not rel or "\x00" in rel or Path(rel).is_absolute():
        raise error(f"{root}: {what} {rel!r} is not a relative path inside the folder, refused")
    p = root / rel
    if not is_inside(p.resolve(), root.resolve()):
        raise error(f"{p}: {what} leads outside {root}, refused")
    return p


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _unlink_quietly(p: str) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


LOCK_NAME = ".edgetl.lock"


@contextmanager
def folder_lock(folder: Path, what: str) -> Iterator[None]:
    """One writer per run or export folder: an exclusive ``flock`` on ``folder/.edgetl.lock``.

    A second process gets a one-line UsageError naming the PID that holds it. A folder this call
    created and that holds nothing but the lock when it ends (a run refused at its start) is removed.
    """
    import fcntl

    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        f = open(folder / LOCK_NAME, "a+")
    except OSError as e:
        raise _write_error(folder / LOCK_NAME, e) from e
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "unknown"
            raise UsageError(f"{folder}: another edgetl {what} (PID {pid}) is writing this folder; wait for it "
                             "to finish or pick another folder") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield
    finally:
        f.close()
        if created and [p.name for p in folder.iterdir()] == [LOCK_NAME]:
            _unlink_quietly(str(folder / LOCK_NAME))
            try:
                folder.rmdir()
            except OSError:
                pass
