"""The one exception users see: a mistake in what they asked, stated in one line."""


class OnnxDtypeError(Exception):
    """A user-facing error. The CLI prints its message as one line and exits non-zero."""
