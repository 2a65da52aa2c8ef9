"""The project's exception root: callers catch :class:`CowrieError` (as Alembic's
callers catch ``CommandError``); each subclass names one kind of problem."""

from __future__ import annotations


class CowrieError(RuntimeError):
    """Something an operator must act on; the message says what and how."""


class IncompatibleSchema(CowrieError):
    """The database's schema cannot be adopted or read as it is; nothing was changed."""


class CannotConnect(CowrieError):
    """The database cannot be reached, or refused us; the message names it (masked),
    the server's reason and what to check. Nothing was changed."""
