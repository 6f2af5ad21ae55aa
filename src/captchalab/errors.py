"""The one exception type for mistakes a user can fix (bad input, missing files, wrong options).

The CLI turns it into a single line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""


class CaptchalabError(Exception):
    """A problem with the user's input, stated in one line that names the file and the problem."""
