"""The one exception type the CLI turns into a clear one-line message and a non-zero exit."""


class TumorSegError(Exception):
    """A user-facing error: bad input, missing weights, unwritable output, cancelled run."""


class Cancelled(TumorSegError):
    """The caller asked the running job to stop."""
