"""Errors a user can fix: the CLI prints their message (which names the file and the fix), no traceback."""


class PvkdError(Exception):
    """Base of the errors caused by input or configuration rather than by a bug."""


class DataError(PvkdError, ValueError):
    """Malformed or missing input data; the message names the file and what is wrong."""


class ParamsError(PvkdError, ValueError):
    """A missing or invalid value in params.yaml; the message names the key."""
