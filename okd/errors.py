"""User-facing errors.

Anything a user can cause (bad config, missing file, malformed data, incompatible models) raises
`OkdError` with one line saying what is wrong and what to do; the CLI prints it without a traceback
and exits non-zero. Programming errors stay ordinary exceptions.
"""


class OkdError(Exception):
    """A mistake the user can fix; the message is shown as is, on one line."""
