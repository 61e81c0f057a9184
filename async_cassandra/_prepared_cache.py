"""The statements ``execute(..., prepare=True)`` prepares once and reuses.

What a CQL text means depends on more than the text, so a cached statement must never
answer for another meaning:

* **The keyspace in effect.** An unqualified table name is resolved when the statement
  is prepared, and the server keeps that resolution: a statement prepared under
  ``ks_a`` reads ``ks_a`` even after ``USE ks_b``. Entries are keyed on (keyspace,
  text), and statements are prepared *in* the keyspace of their key (protocol v5 sends
  it with the PREPARE), however the session's keyspace was changed (``set_keyspace``,
  a ``USE`` statement, ``connect(keyspace)``).
* **The schema.** A statement's parameter types are fixed when it is prepared; after a
  table is dropped and re-created with other types, binding against the old ones fails
  (or, worse, encodes the value for the old type). An entry remembers the driver's
  metadata object of every table its parameters and result columns belong to, and is
  dropped when the driver's metadata has replaced one (the driver refreshes a table's
  metadata on every schema change it hears of, before a DDL statement sent through this
  cluster returns). For a change the driver has not heard of yet (another client's,
  within ``schema_event_refresh_window``) or with schema metadata disabled, the session
  re-prepares once when binding against a cached statement fails.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from cassandra.query import PreparedStatement

__all__ = ["PreparedCache"]

# (keyspace in effect, query text)
_Key = tuple[str | None, str]
# ((keyspace, table, the driver's TableMetadata object then, or None), ...)
_Tables = tuple[tuple[str, str, Any], ...]


class PreparedCache:
    """A bounded LRU of prepared statements; safe to use from several threads (a
    session may be used from several event loops)."""

    __slots__ = ("_entries", "_lock", "_metadata", "_size")

    def __init__(self, metadata: Callable[[], Any], size: int = 512) -> None:
        # metadata() returns the driver's cluster metadata (keyspaces -> tables).
        self._metadata = metadata
        self._size = size
        self._entries: OrderedDict[_Key, tuple[PreparedStatement, _Tables]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, keyspace: str | None, query: str) -> PreparedStatement | None:
        """The statement cached for ``query`` under ``keyspace``, if its tables have not
        changed since it was prepared."""
        key = (keyspace, query)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            prepared, tables = entry
            if not self._unchanged(tables):
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return prepared

    def put(self, keyspace: str | None, query: str, prepared: PreparedStatement) -> None:
        tables = self._tables_of(prepared)
        with self._lock:
            self._entries[(keyspace, query)] = (prepared, tables)
            self._entries.move_to_end((keyspace, query))
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def discard(self, keyspace: str | None, query: str) -> None:
        with self._lock:
            self._entries.pop((keyspace, query), None)

    def _tables_of(self, prepared: PreparedStatement) -> _Tables:
        # Parameters are ColumnMetadata tuples, result columns plain tuples: both start
        # with (keyspace, table, ...).
        columns = list(prepared.column_metadata or []) + list(prepared.result_metadata or [])
        names = sorted({(c[0], c[1]) for c in columns if c[1]})
        return tuple((ks, table, self._table(ks, table)) for ks, table in names)

    def _unchanged(self, tables: _Tables) -> bool:
        return all(self._table(ks, table) is then for ks, table, then in tables)

    def _table(self, keyspace: str, table: str) -> Any:
        # Reads of the driver's dicts, which its threads replace whole on refresh.
        ks_meta = self._metadata().keyspaces.get(keyspace)
        return None if ks_meta is None else ks_meta.tables.get(table)
