"""Errors of the command line, in their own module so `python -m tui.cli` and `tui.cli` share them."""


class UsageError(Exception):
    """Bad input found by a command; the message is one line that names the problem and the fix."""
