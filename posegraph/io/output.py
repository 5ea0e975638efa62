"""Writing output files safely: every file posegraph writes (g2o graphs, OBJ meshes, debug
traces, figures) goes through :func:`write_output` or :func:`write_text_atomic`, and the
command line checks its outputs with :func:`check_outputs` before it reads or solves anything.

The rules, in the order a write meets them:

* **An input is never overwritten by accident.** :func:`check_outputs` refuses an output that
  is the same file as an input (compared with :func:`os.stat`, so ``./in.g2o``, a symlink to
  the input or a hard link all count) unless ``overwrite_input=True`` (``--overwrite-input``).
  Two outputs of one run that are the same file are refused too.
* **A regular file is replaced atomically.** The bytes go to a temporary file in the target's
  folder, which is renamed over the target (:func:`os.replace`). A reader sees the old file or
  the new one, never a part; after any failure the old file is intact. When a file is
  replaced, the new bytes are flushed to disk (``fsync``, ~10 ms for a 1.5 MB graph) before the
  rename, so a power cut cannot lose both versions; a new file is not flushed.
* **A symlink stays a link.** The file it points to is replaced (the path is resolved with
  :func:`os.path.realpath`); a dangling link gets its target created.
* **Special files are written in place**, never replaced or truncated: character and block
  devices (``/dev/null``), FIFOs, and the process's own streams (``/dev/stdout``,
  ``/dev/stderr``, ``/dev/fd/N``, ``/proc/self/fd/N``) even when they lead to a regular file.
  They are opened for appending, so ``-o /dev/stdout >> log`` appends as the shell would.
* **Modes.** A new file gets ``0666`` minus the umask, as the shell's ``>`` gives it. A replaced
  file keeps its mode bits (a ``0444`` file stays ``0444``) and, where allowed, its owner.
* **Read-only files.** A file its user may not write (:func:`os.access`) is refused with
  ``Permission denied``, as the shell's ``>`` would refuse it, even though its folder would
  allow replacing it. A user allowed to write it (its owner after ``chmod u+w``, or root)
  gets it replaced, mode kept.
* **Temporary files** are named ``.NAME.posegraph-tmp-XXXXXXXX`` (hidden, in the target's
  folder, never ending in the output's extension, so ``*.g2o`` never matches one; posegraph
  never reads one). They are removed on every error, on ``KeyboardInterrupt`` and on SIGTERM
  (for the duration of a write from the main thread, while SIGTERM has its default action,
  the signal first removes the temporary file, then ends the process as it would have). Only
  SIGKILL or a power cut can leave one behind: it is incomplete, never output, and may be
  deleted.
* **Every failure names the file**: :class:`OutputError`, printed by the command line as the
  one line ``error: FILE: reason`` (exit status 2). ``FILE`` is the path as given.
"""

from __future__ import annotations

import errno as errno_codes
import os
import re
import secrets
import signal
import stat
import threading
from contextlib import contextmanager
from typing import BinaryIO, Callable, Iterable, Iterator, Optional, Tuple, Union

from posegraph.errors import PoseGraphError, file_path

PathLike = Union[str, "os.PathLike[str]"]

#: Marks a temporary file: ``.NAME`` + TEMP_MARK + 8 hexadecimal digits.
TEMP_MARK = ".posegraph-tmp-"
#: Characters of the target's name kept in a temporary name (names stay under NAME_MAX).
_NAME_KEEP = 50
#: The process's own streams: written in place even when they lead to a regular file.
_STREAM = re.compile(r"^(/dev/(stdout|stderr|fd/\d+)|/proc/(self|\d+)/fd/\d+)$")


class OutputError(PoseGraphError, OSError):
    """An output file that must not or cannot be written; ``str(err)`` is ``"FILE: reason"``.

    Also an :class:`OSError` (``errno``, ``strerror`` and ``filename`` set; ``errno`` is None
    for a refusal), so code that catches ``OSError`` around a write keeps working.
    """

    def __init__(self, message: str, path: str, errno: Optional[int] = None):
        PoseGraphError.__init__(self, message, path)
        self.errno = errno
        self.strerror = message
        self.filename = path

    __str__ = PoseGraphError.__str__  # "FILE: reason", not OSError's "[Errno N] …" form


def _error(err: OSError, path: str) -> OutputError:
    """``err`` (raised while writing ``path``) as an :class:`OutputError` naming ``path``."""
    return OutputError(err.strerror or str(err) or type(err).__name__, path, err.errno)


def _same_file(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` are one existing regular file (same device and inode: symlinks,
    ``./`` variants and hard links all count). Special files never count (``/dev/stdin`` and
    ``/dev/stdout`` may be one terminal)."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return stat.S_ISREG(sa.st_mode) and (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _resolve(path: str) -> Tuple[str, Optional[os.stat_result], bool]:
    """Where a write to ``path`` lands: the resolved path, its status (None when it does not
    exist yet) and whether it is written in place (a special file). Raises
    :class:`OutputError` when it cannot be written: a directory, a missing or unwritable
    folder, a read-only file."""
    try:
        st: Optional[os.stat_result] = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as err:  # e.g. a symlink loop, a folder that is a file
        raise _error(err, path) from err
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutputError("Is a directory", path, errno_codes.EISDIR)
    if (st is not None and not stat.S_ISREG(st.st_mode)) or _STREAM.match(os.path.abspath(path)):
        return path, st, True
    real = os.path.realpath(path)
    folder = os.path.dirname(real)
    if not os.path.isdir(folder):
        raise OutputError("No such file or directory", path, errno_codes.ENOENT)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"Permission denied (cannot create files in {folder})", path, errno_codes.EACCES)
    if st is not None and not os.access(real, os.W_OK):
        raise OutputError("Permission denied (read-only file)", path, errno_codes.EACCES)
    return real, st, False


def check_outputs(
    outputs: Iterable[Optional[PathLike]],
    inputs: Iterable[Optional[PathLike]] = (),
    *,
    overwrite_input: bool = False,
) -> None:
    """Refuse, before any work is done, outputs that must not or cannot be written.

    Args:
        outputs: paths to be written (``None`` entries are skipped).
        inputs: paths read by the same run (``None`` entries are skipped).
        overwrite_input: allow an output that is the same file as an input.

    Raises:
        OutputError: an output is an input (naming both), two outputs are one file, or an
            output cannot be written (a directory, a missing or unwritable folder, a
            read-only file).
    """
    inputs = [os.fspath(p) for p in inputs if p is not None]
    seen: list = []
    for out in (file_path("output path", p, OutputError) for p in outputs if p is not None):
        for inp in inputs:
            if not overwrite_input and _same_file(out, inp):
                raise OutputError(
                    f"is the input file {inp}; refusing to overwrite it "
                    "(--overwrite-input or overwrite_input=True allows it)",
                    out,
                )
        for other in seen:
            if _same_file(out, other) or (
                not os.path.exists(out) and os.path.realpath(out) == os.path.realpath(other)
            ):
                raise OutputError(f"is also the output {other}; give each output its own file", out)
        _resolve(out)
        seen.append(out)


class _Terminated(BaseException):
    """SIGTERM arrived during a write (raised by the handler :func:`_sigterm_cleans_up` sets)."""


@contextmanager
def _sigterm_cleans_up() -> Iterator[None]:
    """Turn SIGTERM into :class:`_Terminated` for the duration of the block, so the writer's
    clean-up runs, then end the process by SIGTERM as the default action would have. Only in
    the main thread (where Python runs signal handlers) and while SIGTERM has its default
    action (a program's own handler is left alone)."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    if not in_main_thread or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise _Terminated

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _create_temp(folder: str, name: str) -> Tuple[int, str]:
    """A new temporary file ``.NAME.posegraph-tmp-XXXXXXXX`` in ``folder``, opened for writing
    with mode ``0666`` minus the umask: its descriptor and path."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = os.path.join(folder, f".{name[:_NAME_KEEP]}{TEMP_MARK}{secrets.token_hex(4)}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno_codes.EEXIST, "no free temporary file name", folder)


def _keep_owner_and_mode(fd: int, st: os.stat_result) -> None:
    """Give the new file ``fd`` the replaced file's owner (where allowed) and mode bits."""
    if not hasattr(os, "fchown"):  # not a POSIX system
        return
    if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
        try:
            os.fchown(fd, st.st_uid, st.st_gid)
        except OSError:
            pass  # only root may give a file away; the file is then the writer's
    os.fchmod(fd, stat.S_IMODE(st.st_mode))


def write_output(path: PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Write a file by calling ``write(fh)`` on a binary file object, following the rules of
    this module (atomic replacement of regular files through symlinks, special files in place,
    modes kept, temporary files removed).

    Args:
        path: the file to write; its folder must exist.
        write: writes the contents to the binary file object it is given.

    Raises:
        OutputError: the file cannot be written (names ``path`` and the reason); the old file,
            if any, is intact and no temporary file remains.
    """
    path = file_path("output path", path, OutputError)
    target, st, in_place = _resolve(path)
    if in_place:
        try:
            with os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND), "wb") as fh:
                write(fh)
        except OutputError:
            raise
        except OSError as err:
            raise _error(err, path) from err
        return
    folder, name = os.path.split(target)
    with _sigterm_cleans_up():
        tmp: Optional[str] = None
        try:
            fd, tmp = _create_temp(folder, name)
            if st is not None:
                _keep_owner_and_mode(fd, st)
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                if st is not None:  # the old contents survive a power cut until the new are on disk
                    os.fsync(fd)
            os.replace(tmp, target)
            tmp = None
        except BaseException as err:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            if isinstance(err, OSError) and not isinstance(err, OutputError):
                raise _error(err, path) from err
            raise


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write ``text`` as UTF-8 with ``\\n`` line ends to ``path`` (see :func:`write_output`)."""
    data = text.encode("utf-8")
    write_output(path, lambda fh: fh.write(data))


__all__ = ["OutputError", "check_outputs", "write_output", "write_text_atomic", "TEMP_MARK"]
