"""The one exception type the CLI turns into a clear one-line message and a non-zero exit."""


class TumorSegError(Exception):
    """A user-facing error: bad input, missing weights, unwritable output, cancelled run."""


class Cancelled(TumorSegError):
    """The caller asked the running job to stop."""


def brief(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (library errors can run to many lines of advice)."""
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:limit]
