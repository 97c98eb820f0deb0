"""The one exception type for errors a user can cause.

A command-line tool catches :class:`InputError`, prints its message on one line and
exits with status 2 (STYLE.md rule 14). Programming errors stay tracebacks.
"""


class InputError(Exception):
    """Bad input from the user: a path, a file format, a shape or a value.

    The message says what is wrong and how to fix it, in one line.
    """
