"""A fixed SELECT run on a pooled DBAPI connection, for the two queries of every stream connect.

Every ``/stream`` connect asks the database who its login belongs to and what the user has
stored (and a deploy without carrying asks it 20,000 times at once). Through SQLAlchemy Core
each of those costs ~50 µs of Python, of which SQLite's own work is ~5 µs: the execution
context, parameter construction and event dispatch of a general-purpose engine. Here the
statement is compiled once per dialect and run on a connection from the same pool with the
driver's own cursor, ~9 µs. The pool's checkout (and its pre-ping) is unchanged; a driver
error is raised as SQLAlchemy's own exception (``OperationalError`` answers 503, see
app/errors), after invalidating the connection when the dialect says it is gone.

SQLAlchemy has no public door for this: ``exec_driver_sql`` still builds the execution
context (~35 µs). Only plain columns are read, so no result processing is skipped.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa


class RawSelect:
    """``statement``, compiled per dialect, run with its named parameters (``sa.bindparam``;
    nothing else may be bound); rows as tuples.

    ``executed`` counts the statements run this way in this process (SQLAlchemy's own events do
    not see them; an app that counts statements adds it)."""

    executed = 0

    def __init__(self, statement: sa.Select) -> None:
        self.statement = statement
        self._compiled: dict[sa.engine.Dialect, tuple[str, tuple[str, ...] | None, dict]] = {}

    def _sql(self, dialect: sa.engine.Dialect) -> tuple[str, tuple[str, ...] | None, dict]:
        found = self._compiled.get(dialect)
        if found is None:
            compiled = self.statement.compile(dialect=dialect)
            order = tuple(compiled.positiontup) if compiled.positional else None
            # A typed parameter (a UTC datetime) goes to the driver as its type would send it.
            processors = {
                name: process
                for name, bind in compiled.binds.items()
                if (process := bind.type.bind_processor(dialect)) is not None
            }
            found = self._compiled[dialect] = (compiled.string, order, processors)
        return found

    def rows(self, engine: sa.Engine, **params: Any) -> list[tuple]:
        """The statement's rows for ``params`` (every bound name, by name)."""
        sql, order, processors = self._sql(engine.dialect)
        for name, process in processors.items():
            params[name] = process(params[name])
        args = tuple(params[name] for name in order) if order is not None else params
        error = engine.dialect.loaded_dbapi.Error
        try:
            conn = engine.raw_connection()
        except error as exc:  # the pool's connect: Engine.connect() would wrap it the same way
            raise sa.exc.DBAPIError.instance(None, None, exc, error) from exc
        try:
            cursor = conn.cursor()
            try:
                RawSelect.executed += 1
                cursor.execute(sql, args)
                return cursor.fetchall()
            finally:
                cursor.close()
        except error as exc:
            gone = engine.dialect.is_disconnect(exc, conn.dbapi_connection, None)
            if gone:
                conn.invalidate(exc)
            raise sa.exc.DBAPIError.instance(sql, args, exc, error, connection_invalidated=gone) from exc
        finally:
            conn.close()
