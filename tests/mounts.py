"""Real file systems that refuse writes, for the output tests: a tiny tmpfs to fill, a read-only folder.

Root ignores permission bits, so "unwritable" must be a read-only mount when
the tests run as root (as in CI containers); otherwise a 0o500 folder is
unwritable already.  Mounting needs root (CAP_SYS_ADMIN): without it the
tests that need a full disk are skipped, never faked.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _mount(folder: Path, options: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")


@contextmanager
def tiny_fs(folder: Path, size: str = "1m") -> Iterator[Path]:
    """``folder`` as a real tmpfs of ``size`` (unmounted afterwards)."""
    _mount(folder, f"size={size}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def fill(folder: Path, leave: int) -> None:
    """Fill ``folder``'s file system until only about ``leave`` bytes are free."""
    st = os.statvfs(folder)
    with open(folder / "filler", "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))


@contextmanager
def read_only_folder(folder: Path) -> Iterator[Path]:
    """``folder``, in which no file can be created, even by root."""
    if os.geteuid() != 0:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o500)
        try:
            yield folder
        finally:
            folder.chmod(0o700)
        return
    _mount(folder, "ro,size=64k")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
