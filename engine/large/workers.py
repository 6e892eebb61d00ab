"""What a worker process of the ``processes`` executor does first: keep stdout clean, and die with its parent.

Standard library only at import: a spawned worker imports this module (to
unpickle its initializer) before anything else of the engine, so that it is
bound to its parent's life within a fraction of a second of starting rather
than after the seconds torch takes to import.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PARENT_POLL = 0.5  # seconds between a worker's looks at whether the process that started it still runs
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies


def start_worker(threads: int, parent: int) -> None:
    """A pool worker's initializer: its stdout is the engine's protocol stream, so anything printed goes to
    stderr; it must not outlive ``parent``, the process that started the pool; it gets ``threads`` CPU threads."""
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    die_with_parent(parent)
    import torch

    torch.set_num_threads(threads)


def die_with_parent(parent: int) -> None:
    """End this process when ``parent`` ends, however it ends (kill -9 included).

    A pool worker left behind keeps its interpreter and torch (hundreds of MB)
    forever: it waits on a queue whose other end it holds itself.  On Linux
    the kernel sends SIGKILL at the parent's death (``PR_SET_PDEATHSIG``);
    elsewhere, and as a second line, a thread watches for the parent to change
    (an orphan is adopted by another process) every ``PARENT_POLL`` s.
    The multiprocessing resource tracker needs nothing: it exits when the last
    holder of its pipe (the parent and these workers) is gone.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no libc to ask: the watchdog alone
            pass
    if os.getppid() != parent:  # it died before we asked
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="nksr-parent-watch", daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL)
    os._exit(1)
