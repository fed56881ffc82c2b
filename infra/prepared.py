"""Server-side prepared statements for the hot paths' PostgreSQL statements.

psycopg2 sends every statement as text with its values filled in, so the
server parses and plans it on every call. For a statement as large as the
submit's batch INSERT (a CTE with a window and a per-row lookup) planning cost
the server more than inserting a dozen rows. A `PreparedStatement` is
prepared once per database connection (PREPARE), then run by name (EXECUTE):
the server parses it once and reuses its plan.

Which connections hold which statements is kept in SQLAlchemy's per-connection
`info` (emptied when the pool replaces a connection). When the session and
that record disagree (a DISCARD ALL by a proxy, or a pooler in transaction
mode that hands each transaction another server connection), the statement
is prepared again and run once more, in autocommit (where the failed attempt
changed nothing); a connection on which that happens twice runs the plain
statement from then on, planned each time, so a submit never fails over the
bookkeeping.

`settings` are planner settings for the statement alone: they go with each
EXECUTE as SET LOCAL, in the same message. In autocommit that message is one
implicit transaction, so they end with the statement; inside a transaction
they hold until it ends.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from psycopg2 import errors as pg_errors
from sqlalchemy import Connection, CursorResult
from sqlalchemy.exc import DBAPIError

_NAMED = re.compile(r"%\((\w+)\)s")
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
_INFO_KEY = "conveyor.prepared"
_PREPARED = "prepared"
_PLAIN = "plain"


class PreparedStatement:
    """One statement, written with psycopg2's `%(name)s` placeholders, run prepared.

    `types` gives each parameter's PostgreSQL type, in the order of the PREPARE's
    parameter list; every placeholder must be one of them.
    """

    def __init__(
        self,
        name: str,
        sql: str,
        types: Mapping[str, str],
        settings: Mapping[str, str] | None = None,
    ) -> None:
        if not _IDENTIFIER.fullmatch(name):
            raise ValueError(f"not a plain SQL identifier: {name!r}")
        if unknown := set(_NAMED.findall(sql)) - set(types):
            raise ValueError(f"placeholders without a type: {sorted(unknown)}")
        position = {param: index + 1 for index, param in enumerate(types)}
        # $n for each parameter. A literal % stays %%: psycopg2 still formats
        # the PREPARE (SQLAlchemy hands it an empty mapping) and unescapes it.
        body = _NAMED.sub(lambda match: f"${position[match[1]]}", sql)
        self.name = name
        self.prepare_sql = f"PREPARE {name} ({', '.join(types.values())}) AS {body}"
        prefix = ""
        for setting, value in (settings or {}).items():
            if not _IDENTIFIER.fullmatch(setting) or not _IDENTIFIER.fullmatch(value):
                raise ValueError(f"not a plain setting: {setting}={value}")
            prefix += f"SET LOCAL {setting} = {value}; "
        # psycopg2 fills in the values (as literals, each cast to its type).
        args = ", ".join(f"%({param})s::{kind}" for param, kind in types.items())
        self.execute_sql = f"{prefix}EXECUTE {name} ({args})"
        # The same statement unprepared (values cast to their types in place).
        self.plain_sql = _NAMED.sub(lambda match: f"{match[0]}::{types[match[1]]}", sql)

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> CursorResult:
        """Run the statement on `conn` (PostgreSQL), preparing it there first if needed."""
        state: dict[str, Any] = conn.connection.info.setdefault(_INFO_KEY, {})
        for _attempt in (1, 2):
            mode = state.get(self.name)
            if mode == _PLAIN:
                break
            try:
                if mode is None:
                    conn.exec_driver_sql(self.prepare_sql)
                    state[self.name] = _PREPARED
                return conn.exec_driver_sql(self.execute_sql, params)
            except DBAPIError as exc:
                if isinstance(exc.orig, pg_errors.DuplicatePreparedStatement):
                    state[self.name] = _PREPARED  # the session has it; our record had lost it
                elif isinstance(exc.orig, pg_errors.InvalidSqlStatementName):
                    state.pop(self.name, None)  # the session lost it
                else:
                    raise
                lost = (self.name, "lost")
                state[lost] = state.get(lost, 0) + 1
                if state[lost] >= 2:
                    state[self.name] = _PLAIN
                if not _autocommit(conn):
                    raise  # the failed statement aborted the transaction: the caller retries
        return conn.exec_driver_sql(self.plain_sql, params)


def _autocommit(conn: Connection) -> bool:
    return bool(getattr(conn.connection.dbapi_connection, "autocommit", False))
