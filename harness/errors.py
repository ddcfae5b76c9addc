"""Errors shared by the whole project.

``UserError`` is the base of every error caused by what a user gave us (a bad
config file, a bad URI, a missing peer program): the CLI prints its message on
one line and exits 2 instead of showing a traceback.
"""


class UserError(Exception):
    """A mistake in what the user asked for; the message says what and how to fix it."""
