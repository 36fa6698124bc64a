"""Errors the user fixes. The command-line entry points print them as one line and exit non-zero."""


class UserError(Exception):
    """A problem on the user's side (a missing checkpoint, a framework not installed, unreadable data)."""


class TrainingStopped(Exception):
    """Training ended early on purpose, after saving a checkpoint: a signal (SIGINT / SIGTERM) or too many
    non-finite losses in a row. `exit_code` is what the command exits with."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
