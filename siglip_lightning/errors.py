"""Errors caused by the user's input (config, paths, data), reported without a traceback."""


class UserInputError(Exception):
    """A problem the user can fix: the message names the key, path or column at fault."""


class TrainingAbortedError(RuntimeError):
    """Training went wrong in a way that retrying the same step cannot fix (e.g. NaN after NaN).

    The CLI prints it without a traceback and exits with code 3, so that a job scheduler can tell
    it from a crash worth restarting.
    """
