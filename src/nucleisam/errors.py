"""The one exception type users see: its message says what is wrong, where, and what to do."""


class NucleisamError(Exception):
    """A problem with the user's input, files or options.

    The CLI prints the message (no traceback) and exits with status 2. Raise it with a message that
    names the file or option at fault and says how to fix it.
    """
