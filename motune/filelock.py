"""An exclusive ``flock`` of a file, safe across ``fork``: the one lock motune's local workers queue on.

Used for the sampler's planning turn (:class:`motune.sampler.KneeSampler`, ``PATH.plan``)
and for the queue in front of Optuna's journal file lock
(:class:`motune.storage.QueuedJournalLock`, ``PATH.flock``). ``flock`` excludes other
*open files*, so each process opens the file once for itself (a forked child closes
its copy of the parent's descriptor and opens its own); the kernel hands the lock to
the next waiting process the moment it is released, and frees it if its holder dies.
Not re-entrant and not a thread lock: callers pair it with one.
"""

from __future__ import annotations

import fcntl
import os
from typing import Any


class FileLock:
    """Exclusive ``flock`` of ``path`` (created if missing), one open file per process.

    Example (another open file of the same path cannot take it meanwhile):

    .. testcode::

        import fcntl, os, tempfile
        from motune.filelock import FileLock

        path = os.path.join(tempfile.mkdtemp(), "study.journal.plan")
        lock = FileLock(path)
        lock.acquire()
        other = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            raise AssertionError("taken twice")
        except BlockingIOError:
            pass
        lock.release()
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free now
        os.close(other)
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._open: tuple[int, int] | None = None  # (pid, fd)

    def acquire(self) -> None:
        """Block until this process holds the lock."""
        if self._open is None or self._open[0] != os.getpid():
            if self._open is not None:  # a forked child: close its copy of the parent's file, open its own
                os.close(self._open[1])
            self._open = (os.getpid(), os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644))
        fcntl.flock(self._open[1], fcntl.LOCK_EX)

    def release(self) -> None:
        """Let the next waiting process have it."""
        assert self._open is not None
        fcntl.flock(self._open[1], fcntl.LOCK_UN)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}  # a file descriptor means nothing in another process

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])
