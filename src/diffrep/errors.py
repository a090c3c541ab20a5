"""One exception type for user mistakes.

Anything the user can fix (a bad config key, a missing data file, a corrupt checkpoint, a NaN
loss) raises `UserError` with one message naming the problem and the fix. The CLI turns it into
exit code 2 and that one message, without a traceback. Programming errors stay ordinary
exceptions so that they do show their traceback.
"""


class UserError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


class Interrupted(Exception):
    """A command stopped by Ctrl-C / SIGTERM after saving its work (the CLI exits 130)."""
