"""What every command shares: error handling, warnings, and option conversion."""

import os
import re
import sys
import warnings

from docopt import DocoptExit, docopt

from ..errors import InputError
from ..io.atomic import output_folder, refuse_to_overwrite  # noqa: F401  (re-exported for the commands)


def run(doc, argv, body, name):
    """Parse ``argv`` with the docopt usage ``doc``, call ``body(args)``, map errors to codes.

    An :class:`InputError` prints ``NAME: error: MESSAGE`` on one line to stderr and gives
    exit code 2; a usage error prints the usage and gives 2. Progress bars still on the
    screen are cleared before the message. While ``body`` runs, every Python warning is
    shown as one line, ``NAME: warning: MESSAGE (file.py:line)``, never with the source
    line Python prints by default. A ``--threads`` option sets the CPU threads before
    ``body`` runs.

    Returns
    -------
    int
        body's return value (0 when it returns None), or 2.
    """
    try:
        args = docopt(doc, argv=argv)
    except DocoptExit as exc:
        print(exc, file=sys.stderr)
        return 2
    shown = warnings.showwarning
    warnings.showwarning = _warning_line(name)
    try:
        if args.get("--threads") is not None:              # once, before any work
            set_threads(args["--threads"])
        rc = body(args)
    except InputError as exc:
        _clear_progress_bars()
        print("%s: error: %s" % (name, " ".join(str(exc).split())), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _clear_progress_bars()
        print("%s: interrupted" % name, file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown
    return 0 if rc is None else rc


def given_options(doc, argv=None):
    """The options that ``argv`` gives, as opposed to those docopt filled in from the
    usage's ``[default: ...]`` markers.

    ``doc`` is parsed again without its default markers (so an option not given reads
    None or False), by docopt itself: an abbreviated long option (``--lr-s cosine`` for
    ``--lr-schedule``) counts as the option it stands for.

    Parameters
    ----------
    doc : str
        The docopt usage.
    argv : list of str or None
        As for ``docopt`` (None: ``sys.argv[1:]``); already parsed once without error.

    Returns
    -------
    set of str
        Option names as docopt spells them, e.g. {"--lr-schedule", "--resplit"}.
    """
    bare = re.sub(r"\[default: [^\]]*\]", "", doc, flags=re.IGNORECASE)
    args = docopt(bare, argv=argv)
    return {k for k, v in args.items() if k.startswith("-") and v not in (None, False)}


def _warning_line(name):
    """A ``warnings.showwarning`` that prints one line through tqdm (bars stay whole)."""
    def show(message, category, filename, lineno, file=None, line=None):
        from tqdm import tqdm
        text = " ".join(str(message).split())
        tqdm.write("%s: warning: %s (%s:%d)" % (name, text, os.path.basename(filename), lineno),
                   file=sys.stderr)
    return show


def _clear_progress_bars():
    """Close every open tqdm bar and erase its line, so an error message stands alone
    (tqdm keeps its open bars in the class attribute ``_instances``)."""
    from tqdm import tqdm
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.leave = False
        bar.close()


def set_threads(value):
    """``--threads``: "auto" or a count >= 1 for :func:`cupyden.backend.set_cpu_threads`.

    Returns
    -------
    int
        The thread count in use.

    Raises
    ------
    InputError
        For a value that is neither "auto" nor a positive integer.
    """
    from ..backend import set_cpu_threads
    if value == "auto":
        return set_cpu_threads()
    try:
        n = int(value)
    except ValueError:
        raise InputError("--threads must be auto or a positive integer, got %r" % value)
    return set_cpu_threads(n)


def as_int(args, key, minimum=None):
    """Option ``key`` as an int (>= minimum); InputError otherwise."""
    try:
        v = int(args[key])
    except (TypeError, ValueError):
        raise InputError("%s must be an integer, got %r" % (key, args[key]))
    if minimum is not None and v < minimum:
        raise InputError("%s must be >= %d, got %d" % (key, minimum, v))
    return v


def as_float(args, key, minimum=None, maximum=None):
    """Option ``key`` as a float in [minimum, maximum]; InputError otherwise."""
    try:
        v = float(args[key])
    except (TypeError, ValueError):
        raise InputError("%s must be a number, got %r" % (key, args[key]))
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        raise InputError("%s must be in [%s, %s], got %g" % (key, minimum, maximum, v))
    return v


def as_choice(args, key, choices):
    """Option ``key`` as one of ``choices``; InputError otherwise."""
    v = args[key]
    if v not in choices:
        raise InputError("%s must be one of %s, got %r" % (key, ", ".join(choices), v))
    return v
