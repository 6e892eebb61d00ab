"""Output files that never cost the user data: not the input, checked writable before the work, written atomically.

Standard library only (and :mod:`.errors`): the Blender command uses it too
(through ``nksr_blender.engine_link``), so the CLI and Blender keep one set of
rules.  Every refusal is an :class:`InputError` naming the path and the fix.

- :func:`same_file`: is the output the input, through symlinks, hard links or
  ``..`` spellings?  Writing it would destroy the cloud.
- :func:`check_writable`: a real probe (create and remove a file in the
  folder), because permission bits lie: root ignores them, and a read-only
  mount or ``/sys`` passes ``os.access`` yet refuses every file.
- :func:`atomic_output`: the writer writes a hidden temporary file beside the
  target, which is renamed over it only once complete, so a full disk or a
  crash leaves the previous file intact and no half-written one.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError

_TEMP_ATTEMPTS = 100


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether ``a`` and ``b`` name one file: by device and inode when both exist, else by resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one is missing: no file to share, unless both spell one path
        return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def check_not_input(source: str | os.PathLike[str], output: str | os.PathLike[str]) -> None:
    """Refuse an output that is the input file: writing the mesh would destroy the cloud it came from."""
    if same_file(source, output):
        raise InputError(f"{output}: the output is the input file {source}; writing it would destroy the cloud.",
                         "Give the mesh a new file name, e.g. with a _mesh suffix.")


def target_of(path: str | os.PathLike[str]) -> Path:
    """Where writing ``path`` lands: a symlink's target (written through, as ``open`` would), else ``path``."""
    return Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)


def _create_temp(target: Path) -> Path:
    """A new, empty, hidden file beside ``target``, created as ``open`` creates files (mode 0o666 less umask)."""
    for _ in range(_TEMP_ATTEMPTS):
        temp = target.with_name(f".{target.stem}.{secrets.token_hex(4)}.partial{target.suffix}")
        try:
            os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return temp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(target.parent))


def _temp_beside(path: str | os.PathLike[str], target: Path) -> Path:
    """:func:`_create_temp`, or the InputError that says the output's folder takes no new file."""
    try:
        return _create_temp(target)
    except OSError as exc:
        raise InputError(f"{path}: cannot create files in {target.parent} ({exc.strerror or exc}).",
                         _hint(exc)) from None


def _hint(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "Free space on that disk, or choose an output on another one."
    if exc.errno == errno.EFBIG:
        return "The file is larger than that file system or your file-size limit allows: choose another output."
    return "Choose a folder you can write to."


def check_writable(path: str | os.PathLike[str]) -> None:
    """Raise :class:`InputError` unless a file can be created beside ``path`` and ``path`` is not a folder."""
    target = target_of(path)
    folder = target.parent
    if not folder.is_dir():
        raise InputError(f"{path}: the folder {folder} does not exist.", "Create it, or choose another output.")
    if target.is_dir():
        raise InputError(f"{path}: is a folder.", "Give a file name for the output.")
    os.unlink(_temp_beside(path, target))


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it replaces ``path`` in one rename.

    On any failure the temporary file is removed and ``path`` is untouched.  A
    replaced file's permission bits carry over; a new one gets the usual
    0o666 less umask.  OS errors of the write come out as :class:`InputError`.
    """
    target = target_of(path)
    temp = _temp_beside(path, target)
    try:
        yield temp
        fd = os.open(temp, os.O_RDWR)  # writable: Windows flushes only handles open for writing
        try:
            os.fsync(fd)  # a late write error (delayed allocation, NFS) surfaces here, before the rename
        finally:
            os.close(fd)
        try:
            os.chmod(temp, stat.S_IMODE(os.stat(target).st_mode))
        except FileNotFoundError:
            pass
        os.replace(temp, target)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise InputError(f"{path}: cannot write ({exc.strerror or exc}); any previous file is unchanged.",
                          _hint(exc)) from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
