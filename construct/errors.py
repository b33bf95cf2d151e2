"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback."""


class ConstructError(Exception):
    """A problem with the user's input or environment (a file, a flag, a store), not a bug."""
