"""Writing a model folder so that nothing is lost: checked before any work, staged, moved into place when complete.

    with OutputFolder(args.out, sources=[src], overwrite=args.overwrite) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    # args.out now holds the complete folder; on an error or an interrupt it was never touched

What :class:`OutputFolder` refuses, before anything is computed (:class:`OutputError`, naming the path):

* OUT is one of the sources, lies inside one, or contains one (replacing it would delete the source);
* OUT is an existing file;
* OUT is a non-empty folder and ``overwrite`` is False;
* another process is writing OUT (an exclusive lock beside it, held until the folder is in place).

Everything is written into a hidden staging folder next to OUT (``.NAME.partial-PID``); only when the block ends
without an error is it renamed to OUT (an existing OUT, with ``overwrite``, is moved aside first and deleted after the
rename). An interrupted or failed write leaves OUT as it was; a staging folder left by a killed process is removed by
the next writer of the same OUT.
"""

from __future__ import annotations

import os
import shutil
import uuid


class OutputError(ValueError):
    """The output folder cannot be written as asked (see :class:`OutputFolder`)."""


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_output(out: str, sources=(), overwrite: bool = False, flag: str = "--overwrite") -> str:
    """Raise :class:`OutputError` when ``out`` may not be written (see the module docstring); returns its real path."""
    real = _real(out)
    for source in sources:
        if source is None or not os.path.exists(source):
            continue
        src = _real(source)
        if _inside(real, src):
            where = "is" if real == src else "lies inside"
            raise OutputError(f"OUT: {out!r} {where} the source {source!r}; writing there would overwrite the model "
                              "being read. Choose another output folder")
        if _inside(src, real):
            raise OutputError(f"OUT: {out!r} contains the source {source!r}; replacing it would delete the source. "
                              "Choose another output folder")
    if os.path.isfile(real) or (os.path.exists(real) and not os.path.isdir(real)):
        raise OutputError(f"OUT: {out!r} is an existing file, not a folder; choose a folder path")
    if os.path.isdir(real) and os.listdir(real) and not overwrite:
        raise OutputError(f"OUT: {out!r} is a non-empty folder ({len(os.listdir(real))} entries); pass {flag} to "
                          "replace it (it is replaced only once the new model is complete)")
    parent = os.path.dirname(real)
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise OutputError(f"OUT: the parent of {out!r} is a file, not a folder")
    return real


class OutputFolder:
    """Context manager: checks ``out`` (:func:`check_output`), locks it, yields a staging folder, moves it into place.

    ``keep_partial=True`` keeps the staging folder after a failure (e.g. Trainer checkpoints to resume from) and
    says where it is; by default it is deleted.
    """

    def __init__(self, out: str, sources=(), overwrite: bool = False, flag: str = "--overwrite",
                 keep_partial: bool = False):
        self.out = os.fspath(out)
        self.real = check_output(self.out, sources, overwrite, flag)
        self.overwrite = overwrite
        self.flag = flag
        self.keep_partial = keep_partial
        parent, name = os.path.split(self.real)
        self.parent, self.name = parent, name
        self.staging = os.path.join(parent, f".{name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self._lock = None

    # ------------------------------------------------------------------------------------------------- lock
    def _acquire(self) -> None:
        import fcntl

        os.makedirs(self.parent, exist_ok=True)
        path = os.path.join(self.parent, f".{self.name}.hf_onebit-lock")
        handle = open(path, "a")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise OutputError(f"OUT: another process is writing {self.out!r} (lock {path}); wait for it to finish "
                              "or choose another output folder") from None
        self._lock = handle

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing releases the lock; the empty lock file stays (deleting it would race)
            self._lock = None

    def _remove_stale_partials(self) -> None:
        """Staging folders of earlier writers of this OUT that died (we hold the lock, so none is in use)."""
        prefix = f".{self.name}.partial-"
        for entry in os.listdir(self.parent):
            if entry.startswith(prefix):
                shutil.rmtree(os.path.join(self.parent, entry), ignore_errors=True)

    # ------------------------------------------------------------------------------------------------- context
    def __enter__(self) -> str:
        self._acquire()
        try:
            # re-check under the lock: another writer may have finished between the first check and the lock
            check_output(self.out, (), self.overwrite, self.flag)
            self._remove_stale_partials()
            os.makedirs(self.staging)
        except BaseException:
            self._release()
            raise
        return self.staging

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                self._commit()
            elif os.path.isdir(self.staging):
                if self.keep_partial and os.listdir(self.staging):
                    print(f"hf_onebit: {self.out!r} was not written; the partial run is kept in {self.staging}")
                else:
                    shutil.rmtree(self.staging, ignore_errors=True)
        finally:
            self._release()
        return False

    def _commit(self) -> None:
        old = None
        if os.path.isdir(self.real) and os.listdir(self.real):
            old = os.path.join(self.parent, f".{self.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.rename(self.real, old)
        elif os.path.isdir(self.real):
            os.rmdir(self.real)  # an empty folder: the rename below takes its place
        try:
            os.rename(self.staging, self.real)
        except OSError:
            if old is not None:
                os.rename(old, self.real)  # put the previous folder back
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
