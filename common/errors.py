"""Errors the user fixes. The command-line entry points print them as one line and exit non-zero."""


class UserError(Exception):
    """A problem on the user's side (a missing checkpoint, a framework not installed, unreadable data)."""
