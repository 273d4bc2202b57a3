"""File helpers every part of compresskit may use: whole-or-nothing writes, content digests, checksums, locks.

Nothing here knows about stages or models: these are the rules by which compresskit touches a
disk. An artifact is written under a temporary name and renamed when whole; a digest is of
contents (sha256), so a replaced file is seen even when its name, size or time did not change;
a directory's checksums are recorded when it is finished and checked before it is trusted again.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from compresskit.errors import CompressKitError

CHECKSUMS = "checksums.json"
_CHUNK = 1 << 20
# (path, size, mtime_ns, inode) -> sha256: a file is hashed once per process unless it changes
_digests: dict[tuple[str, int, int, int], str] = {}


def write_json(path: Path, data: Any) -> None:
    """Write JSON whole or not at all (a temporary file renamed into place)."""
    write_text(path, json.dumps(data, indent=2, default=float))


def write_text(path: Path, text: str) -> None:
    """Write a file whole or not at all (a temporary file renamed into place)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def file_digest(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _digests:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
        _digests[key] = digest.hexdigest()
    return _digests[key]


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != CHECKSUMS)


def tree_digest(path: Path) -> str:
    """One digest of a file, or of every file under a directory (names and contents)."""
    if path.is_file():
        return file_digest(path)
    digest = hashlib.sha256()
    for file in _files(path):
        digest.update(f"{file.relative_to(path)}\0{file_digest(file)}\n".encode())
    return digest.hexdigest()


def write_checksums(directory: Path) -> None:
    """Record the sha256 of every file under `directory` (in CHECKSUMS) once it is complete."""
    write_json(directory / CHECKSUMS, {str(f.relative_to(directory)): file_digest(f) for f in _files(directory)})


def verify_checksums(directory: Path) -> str | None:
    """None if every recorded file is there with its recorded contents, else what is wrong."""
    try:
        recorded = json.loads((directory / CHECKSUMS).read_text())
    except (OSError, ValueError):
        return f"{CHECKSUMS} is missing or unreadable"
    for name, digest in recorded.items():
        file = directory / name
        if not file.is_file():
            return f"{name} is missing"
        if file_digest(file) != digest:
            return f"{name} does not match its checksum (truncated or changed)"
    return None


class DirectoryLock:
    """An exclusive lock on a directory (flock on DIR/.lock): one compresskit process at a time.

    The kernel drops the lock when its process ends however it ends, so a killed run never
    leaves a stale lock behind.
    """

    def __init__(self, directory: Path, what: str):
        self.path = directory / ".lock"
        self.what = what
        self._fd: int | None = None

    def __enter__(self) -> DirectoryLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise CompressKitError(f"{self.path.parent} is in use by another {self.what} (pid {holder}); wait for "
                                       "it to finish or choose another directory") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def partial_dir(target: Path) -> Path:
    """A fresh temporary sibling to build `target` in, then rename: `.NAME.partial-PID-XXXX`.

    What a killed process left this way (its pid no longer runs) is removed first, so leftovers never pile up.
    """
    prefix = f".{target.name}.partial-"
    for old in target.parent.glob(f"{prefix}*"):
        pid = old.name[len(prefix):].split("-", 1)[0]
        if old.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=target.parent))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
