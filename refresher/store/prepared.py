"""The refresh path's writes run on the driver's cursor: compiled once per dialect, bound by SQLAlchemy's own
type processors, executed without the per-execution machinery of ``Connection.execute`` (issue 16).

Why: in a sweep, ``Connection.execute`` of a statement built once (store/hot.py) still cost ~30 µs on SQLite
and ~75 µs on PostgreSQL per statement (cache-key lookup, execution context, result set-up, event
dispatch) against ~8 / ~30 µs for the driver's own ``execute``.

What stays the same:
* the SQL text is SQLAlchemy's compilation for the connection's dialect (casts on PostgreSQL included);
* each value goes through the bind processor SQLAlchemy would apply (``type.dialect_impl(dialect)
  .bind_processor(dialect)``: our TypeDecorators, datetimes as strings on SQLite, JSON), so what is stored
  is byte for byte what ``Connection.execute`` stores (tests/test_store_prepared.py reads it back);
* a driver error becomes the same :class:`~sqlalchemy.exc.DBAPIError` subclass, without parameters;
* the change feed's flag (:data:`~refresher.store.changes.WROTE_ACCOUNTS`) is set as the engine event
  :func:`~refresher.store.changes.mark_account_writes` would set it, which does not see these statements.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError

from refresher.store.changes import WROTE_ACCOUNTS, counts_as_account_write


@dataclass(frozen=True)
class _Compiled:
    sql: str
    defaults: dict[str, Any]  # the statement's own constants (``.values(status="active")``)
    names: tuple[str, ...]  # positional parameter order (qmark), or the names (pyformat)
    positional: bool
    processors: dict[str, Callable[[Any], Any]]
    dbapi_error: type[Exception]


class Prepared:
    """One statement of store/hot.py, run with :meth:`run` on a synchronous connection's cursor."""

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        self.writes_accounts = counts_as_account_write(statement)
        self._compiled: dict[str, _Compiled] = {}  # by dialect name

    def run(self, conn: Connection, params: Mapping[str, Any]) -> int:
        """Execute with ``params`` (every parameter the statement names) in ``conn``'s transaction;
        returns the row count."""
        compiled = self._compiled.get(conn.dialect.name) or self._compile(conn.dialect)
        values = {**compiled.defaults, **params}
        for name, process in compiled.processors.items():
            values[name] = process(values[name])
        bound: Any = [values[n] for n in compiled.names] if compiled.positional else values
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(compiled.sql, bound)
            rowcount = int(cursor.rowcount)
        except compiled.dbapi_error as exc:
            # As SQLAlchemy wraps it (OperationalError, IntegrityError …); no parameters: they hold tokens.
            raise DBAPIError.instance(compiled.sql, None, exc, compiled.dbapi_error, hide_parameters=True) from exc
        finally:
            cursor.close()
        if self.writes_accounts:
            conn.info[WROTE_ACCOUNTS] = True
        return rowcount

    def _compile(self, dialect: Dialect) -> _Compiled:
        compiled = self.statement.compile(dialect=dialect)
        if "POSTCOMPILE" in compiled.string:
            raise TypeError("a statement with expanding parameters cannot be prepared")
        required = {name: None for name, bind in compiled.binds.items() if bind.required}
        defaults = {k: v for k, v in compiled.construct_params(required).items() if k not in required}
        positional = compiled.positiontup is not None
        names = tuple(compiled.positiontup) if positional else tuple(compiled.construct_params(required))
        processors = {}
        for name in set(names):
            process = compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                processors[name] = process
        dbapi = dialect.loaded_dbapi
        prepared = _Compiled(compiled.string, defaults, names, positional, processors, dbapi.Error)
        self._compiled[dialect.name] = prepared
        return prepared
