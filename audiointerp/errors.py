"""Errors a user can fix. The CLI prints them as one line instead of a traceback."""


class AudioInterpError(Exception):
    """Bad input or configuration; the message names the file or option and what was expected."""
