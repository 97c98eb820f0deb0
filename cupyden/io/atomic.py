"""Atomic outputs: write to a temporary file in the target folder, rename when complete.

An interrupted or failed write never leaves a half-written output, and never touches an
existing file of that name until the new one is whole (``os.replace`` is atomic on POSIX
within one file system, hence the temporary file in the same folder). The finished file
gets the permissions an ordinary ``open`` would give it (0666 less the umask), not the
private 0600 of a temporary file. A failed write (a full disk, a lost mount) removes the
temporary file and raises :class:`~cupyden.errors.InputError` with a one-line reason.
"""

import contextlib
import errno
import io
import os
import re
import tempfile

from ..errors import InputError


def _reason(exc):
    """One line for an OSError: its text when that is one short line, else the system's
    text for its errno, else its first line.

    h5py's OSError holds HDF5's multi-line driver report ("file write failed: time = ...")
    with the errno that caused it; the errno's text says the same in a few words.
    """
    if exc.errno:
        text = exc.strerror if _one_line(exc.strerror) else os.strerror(exc.errno)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            text += "; free some space or write to another folder"
        return text
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _one_line(text):
    return isinstance(text, str) and 0 < len(text) <= 120 and "\n" not in text


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
        The folder does not exist or is not writable, or the write fails with an OSError
        (a full disk included); the temporary file is removed and an earlier ``path`` is
        left as it was.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError("%s: output folder does not exist" % folder)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    except OSError as exc:
        raise InputError("%s: cannot write to folder (%s)" % (folder, _reason(exc)))
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError("%s: cannot write (%s)" % (path, _reason(exc)))
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


def refuse_to_overwrite(folder, names, overwrite):
    """Refuse to replace the outputs of an earlier run without ``--overwrite``.

    Parameters
    ----------
    folder : str
    names : sequence of str
        Files in ``folder`` that mark an earlier run's results (e.g. "model.h5").
    overwrite : bool
        The user's --overwrite.

    Raises
    ------
    InputError
        ``folder`` holds one of ``names`` and ``overwrite`` is False.
    """
    found = [n for n in names if os.path.exists(os.path.join(folder, n))]
    if found and not overwrite:
        raise InputError("%s already holds %s of an earlier run; pass --overwrite to replace "
                         "it, --resume to continue it, or choose another -o"
                         % (folder, ", ".join(found)))


#: Room kept free beyond the bytes about to be written to an HDF5 file: the metadata HDF5
#: writes along with them (chunk index nodes, object headers), in bytes.
HDF5_SLACK = 1 << 20


@contextlib.contextmanager
def atomic_hdf5(path, in_memory=False):
    """An h5py file open for writing, renamed to ``path`` when the block ends without an
    error (:func:`atomic_output`).

    HDF5 cannot recover from a write that fails (a full disk): the failure can surface in
    a later call or in the close of an object (printed, then ignored), and a
    ``File.close`` that fails half-way leaves objects that crash the process (segmentation
    fault) when they are closed again. So HDF5 is never left to meet a full disk:

    * ``in_memory`` (checkpoints, any file that fits in memory): HDF5 builds the file in a
      ``BytesIO`` and never touches the disk; one plain write puts the bytes into the
      temporary file, and a full disk is an ordinary OSError.
    * otherwise (a patch store, larger than memory): :func:`check_space` runs at the start
      and before the last flush, and the writer calls it before each large write; chunks
      are written through at once (no chunk cache, ``rdcc_nbytes=0``), and the file is
      flushed before it is closed. On any failure the temporary file is truncated to 0
      bytes (giving its disk space back for HDF5's last metadata write), closed once and
      never touched again, and removed.

    Parameters
    ----------
    path : str
        The final .h5 file.
    in_memory : bool
        Build the whole file in memory first.

    Yields
    ------
    h5py.File
        Open in mode "w". Do not close it in the block.

    Raises
    ------
    InputError
        The folder is missing or not writable, or the disk is too full (see
        :func:`atomic_output`); an earlier file at ``path`` is left as it was.
    """
    import h5py

    with atomic_output(path, ".h5") as tmp:
        if in_memory:
            buf = io.BytesIO()
            with h5py.File(buf, "w") as f:
                yield f
            with open(tmp, "wb") as out:
                out.write(buf.getbuffer())
            return
        f = h5py.File(tmp, "w", rdcc_nbytes=0)
        try:
            check_space(f, 0)
            yield f
            check_space(f, 0)
            f.flush()
        except BaseException as exc:
            _abandon(f, tmp)
            raise _as_oserror(exc)
        f.close()


def check_space(f, nbytes):
    """Refuse to let HDF5 write ``nbytes`` more to ``f`` when its folder has no room.

    Room means ``nbytes`` plus the metadata HDF5 holds in memory (``get_mdc_size``) plus
    :data:`HDF5_SLACK`. Another process can still fill the disk between this check and
    the write; then HDF5's own error is reported (:func:`atomic_hdf5`).

    Parameters
    ----------
    f : h5py.File
        Open for writing.
    nbytes : int

    Raises
    ------
    OSError
        errno ENOSPC, saying how much is needed and how much is free.
    """
    st = os.statvfs(os.path.dirname(os.path.abspath(f.filename)))
    free = st.f_bavail * st.f_frsize
    need = int(nbytes) + f.id.get_mdc_size()[2] + HDF5_SLACK
    if free < need:
        raise OSError(errno.ENOSPC, "No space left on device (%.1f MB needed, %.1f MB free)"
                      % (need / 1e6, free / 1e6))


def _as_oserror(exc):
    """h5py reports some failed writes (a flush) as RuntimeError "... errno = 28 ...";
    those become the OSError they are, everything else stays as it is."""
    m = re.search(r"errno = (\d+)", str(exc)) if isinstance(exc, RuntimeError) else None
    if m and int(m.group(1)):
        return OSError(int(m.group(1)), os.strerror(int(m.group(1))))
    return exc


def _abandon(f, tmp):
    """Close an h5py file whose writing failed, once, after truncating it to 0 bytes."""
    try:
        os.truncate(tmp, 0)
    except OSError:
        pass
    try:
        f.close()
    except (OSError, RuntimeError):
        pass                    # never retried: a second close after a failed one crashes


def _umask():
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask

