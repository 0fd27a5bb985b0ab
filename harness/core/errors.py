"""The harness's name for the one user-facing exception (defined in the bottom layer, kernels/errors.py,
so kernels and variants raise it without importing anything above them), and which OS errors are
the user's to fix rather than a bug: a full disk, a read-only or someone else's folder."""

import errno
import os

from kernels.errors import UserError, did_you_mean

__all__ = ["UserError", "did_you_mean", "filesystem_fault", "filesystem_fix"]

# errno -> what to do about it. Anything else an OSError carries (ENOENT, EBADF, ...) may be a bug
# of ours and keeps its traceback.
_FIXES = {
    errno.ENOSPC: "free some space or write somewhere else",
    errno.EDQUOT: "free some of your quota or write somewhere else",
    errno.EFBIG: "write somewhere that allows larger files",
    errno.EROFS: "write somewhere else",
    errno.EACCES: "check the folder's permissions or write somewhere else",
    errno.EPERM: "check the folder's permissions or write somewhere else",
    errno.EIO: "the storage reported an I/O error; check it or write somewhere else",
}


def filesystem_fault(e: BaseException) -> str | None:
    """'<file>: No space left on device (ENOSPC)' for an OSError the user's storage caused, else None.

    The message names the file and the errno (pyarrow and torch word their own messages
    differently; the errno is what they share)."""
    if not isinstance(e, OSError) or e.errno not in _FIXES:
        return None
    name = errno.errorcode.get(e.errno, str(e.errno))
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{os.strerror(e.errno)} ({name})"


def filesystem_fix(e: OSError) -> str:
    """The way out of a `filesystem_fault`."""
    return _FIXES.get(e.errno, "")
