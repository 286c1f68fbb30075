"""User-facing errors.

Every error a user can cause (bad file, bad option, graph that does not fit)
is an :class:`SncError`; the CLI prints its message on one line and exits
non-zero, without a traceback.
"""


class SncError(Exception):
    """An error caused by the user's input, reported without a traceback."""


class CheckpointError(SncError):
    """A checkpoint file is missing, corrupt, hostile or of the wrong kind."""


class GraphError(SncError):
    """A NIR graph is malformed or uses nodes snc does not know."""
