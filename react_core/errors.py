"""The base of every error the project raises for a problem its user can fix."""

from __future__ import annotations


class ReactError(Exception):
    """A problem the user can fix (a config field, a file, a dataset, a stage): the message names it, says what
    is wrong and gives the fix. The ``react`` command prints it as one line per problem, exit code 2, without
    a traceback; anything else is a bug and keeps its traceback."""
