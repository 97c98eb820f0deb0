"""Atomic outputs: write to a temporary file in the target folder, rename when complete.

An interrupted or failed write never leaves a half-written output, and never touches an
existing file of that name until the new one is whole (``os.replace`` is atomic on POSIX
within one file system, hence the temporary file in the same folder). The finished file
gets the permissions an ordinary ``open`` would give it (0666 less the umask), not the
private 0600 of a temporary file.
"""

import contextlib
import os
import tempfile

from ..errors import InputError


@contextlib.contextmanager
def atomic_output(path, suffix=""):
    """Context manager yielding a temporary path beside ``path``; renamed on success.

    Parameters
    ----------
    path : str
        The final file.
    suffix : str
        Extension for the temporary file (some writers look at it, e.g. ".png").

    Yields
    ------
    str
        The temporary path to write.

    Raises
    ------
    InputError
        The folder does not exist or is not writable, or the write fails with an OSError.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError("%s: output folder does not exist" % folder)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    except OSError as exc:
        raise InputError("%s: cannot write to folder (%s)" % (folder, exc.strerror))
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError("%s: cannot write (%s)" % (path, exc.strerror or exc))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def output_folder(path):
    """Create the output folder ``path`` (and parents) if needed.

    Returns
    -------
    str
        ``path``.

    Raises
    ------
    InputError
        It cannot be created (a file in the way, no permission).
    """
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise InputError("%s: cannot create the output folder (%s)" % (path, exc.strerror))
    return path


def _umask():
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask

