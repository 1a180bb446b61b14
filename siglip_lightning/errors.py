"""Errors caused by the user's input (config, paths, data), reported without a traceback."""


class UserInputError(Exception):
    """A problem the user can fix: the message names the key, path or column at fault."""
