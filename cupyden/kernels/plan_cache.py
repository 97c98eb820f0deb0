"""Persistent cuDNN plan choices: convolutions are tuned once per machine, not per process.

``kernels.cudnn_fe`` times up to ``SETTINGS.tune_plans`` candidate plans the first time it meets a
graph (seconds per process for a U-Net). This module keeps the winner's name (cuDNN's
engine-configuration tag, e.g. ``eng0_k2=3``), its time and the number of candidates timed,
per graph key, in a JSON file; a later process finds the plan of that name among the
heuristics' candidates and builds only it, with no timing. Every process that reads the
same file then runs the same plans (the same kernels, hence the same rounding): several
Dask workers denoising one dataset give identical outputs whichever worker ran a file.

Entries are grouped by context, ``"GPU name (sm_XY)|cudnn VERSION|frontend VERSION"``:
a choice made on another GPU model or library version is never reused.

File: ``$CUPYDEN_PLAN_CACHE`` when set (a file path; ``0`` or ``off`` turns the cache off),
else ``$XDG_CACHE_HOME/cupyden/cudnn_plans.json``, else ``~/.cache/cupyden/cudnn_plans.json``.
Writes hold an exclusive lock (``fcntl.flock`` on ``FILE.lock``), read what is on disk,
merge the new entries into it and replace the file atomically (temporary file + rename),
so concurrent processes never corrupt it nor drop each other's entries. A file that
cannot be read is treated as empty; one that cannot be written is said once on stderr.

This module imports neither CuPy nor cudnn: it stores strings and numbers.
"""

import json
import os
import sys
import tempfile
import threading

#: Environment variable: the cache file, or 0/off to disable the cache.
ENV = "CUPYDEN_PLAN_CACHE"
#: Version of the file's layout.
FORMAT = 1

_LOCK = threading.Lock()
_STATE = {"path": None, "stamp": None, "entries": {}, "warned": False}


def cache_path():
    """The cache file (:data:`ENV`, else the user's cache folder), or None when disabled.

    Returns
    -------
    str or None
    """
    value = os.environ.get(ENV, "").strip()
    if value.lower() in ("0", "off", "false", "no"):
        return None
    if value:
        return value
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cupyden", "cudnn_plans.json")


def _read(path):
    """{context: {key: entry}} from the file; {} when it is missing or unreadable."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def _stamp(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _entries(path):
    """The file's entries, re-read only when the file changed since the last read."""
    stamp = _stamp(path)
    if path != _STATE["path"] or stamp != _STATE["stamp"]:
        _STATE.update(path=path, stamp=stamp, entries=_read(path))
    return _STATE["entries"]


def lookup(context, key):
    """The entry stored for ``key`` in ``context``, or None.

    Parameters
    ----------
    context : str
        GPU model, compute capability and library versions.
    key : str
        The graph's key (``repr`` of ``cudnn_fe``'s plan key).

    Returns
    -------
    dict or None
        What :func:`remember` stored: for a plan {"plan": engine-configuration name,
        "ms": float, "candidates": int, "tried": int}; for a forward convolution's route
        {"split": bool, "fused_ms": float, "split_ms": float}.
    """
    path = cache_path()
    if path is None:
        return None
    with _LOCK:
        entry = _entries(path).get(context, {}).get(key)
    return entry if isinstance(entry, dict) else None


def remember(context, key, entry):
    """Store ``entry`` for ``key`` in ``context``, merged into the file under a lock.

    Parameters
    ----------
    context, key : str
        As in :func:`lookup`.
    entry : dict
        JSON-serialisable; the forms of :func:`lookup`.

    Returns
    -------
    bool
        True when the file was written (False: disabled, or the write failed).
    """
    path = cache_path()
    if path is None:
        return False
    with _LOCK:
        try:
            _merge(path, {context: {key: entry}})
        except OSError as exc:
            if not _STATE["warned"]:
                _STATE["warned"] = True
                print("cupyden: cannot write the cuDNN plan cache %s (%s); plans will be "
                      "tuned again in the next process (set %s to another file, or 0)"
                      % (path, exc.strerror or exc, ENV), file=sys.stderr)
            return False
    return True


def _merge(path, new):
    """Lock, read the file, add ``new`` ({context: {key: entry}}), replace it atomically."""
    import fcntl

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)             # released when the file is closed
        entries = _read(path)
        for context, keys in new.items():
            entries.setdefault(context, {}).update(keys)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"format": FORMAT, "entries": entries}, f, indent=0, sort_keys=True)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        _STATE.update(path=path, stamp=_stamp(path), entries=entries)
