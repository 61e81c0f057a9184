"""The default retry policy: retries that never apply a write twice.

The driver's own ``RetryPolicy`` answers an overloaded, failing or bootstrapping
coordinator, and a connection lost mid-request, with "try the next host" whatever the
statement, so a counter increment, a list append or a lightweight transaction can be
applied twice (the first coordinator may well have applied it before failing).
async-cassandra 0.0.1's ``AsyncRetryPolicy`` did the same for those request errors.
:class:`AsyncRetryPolicy` retries only what is safe to run again:

=================================  ========================================================
Failure (the server's, or the      Decision
connection's)
=================================  ========================================================
read timeout                       Retry once, on the same host, at the same consistency,
                                   when enough replicas answered but the one holding the
                                   data did not (``received >= required`` and no data
                                   retrieved): the data replica was slow, a second read
                                   usually finds it. Otherwise re-raise.
write timeout                      Retry on the same host, up to ``max_retries`` times,
                                   only for an **idempotent** statement and the write
                                   types ``SIMPLE``, ``BATCH``, ``UNLOGGED_BATCH`` and
                                   ``BATCH_LOG``. Otherwise (a counter, a CAS/LWT, a
                                   view or CDC write, anything not idempotent) re-raise.
unavailable                        Retry once, on the next host (this coordinator may be
                                   the one cut off from the replicas). Then re-raise.
request error: overloaded, server  Retry on the next host, up to ``max_retries`` times,
error, bootstrapping, truncate     only for an **idempotent** statement; otherwise
error, connection closed or        re-raise at once: the request may have been applied.
timed out
=================================  ========================================================

``max_retries`` bounds every row. Mark a statement idempotent when running it twice
has the effect of running it once: ``SimpleStatement(..., is_idempotent=True)``,
``prepared.is_idempotent = True`` (its bound statements inherit it), or
``BatchStatement(..., is_idempotent=True)``. Plain strings are never idempotent.

``AsyncCluster`` installs this policy for its default execution profile when you give
no ``retry_policy`` (and no default profile of your own); yours are left alone.
"""

from __future__ import annotations

from typing import Any

from cassandra.policies import RetryPolicy, WriteType

__all__ = ["AsyncRetryPolicy"]

# Writes that are one mutation (or a batch of them) that is the same when applied twice,
# if the statement itself is idempotent. Not counters, CAS (LWT), views or CDC.
_RETRYABLE_WRITE_TYPES = frozenset(
    {WriteType.SIMPLE, WriteType.BATCH, WriteType.UNLOGGED_BATCH, WriteType.BATCH_LOG}
)


class AsyncRetryPolicy(RetryPolicy):  # type: ignore[misc]
    """Retries that are safe: see the table in :mod:`async_cassandra.retry_policy`.

    ``max_retries``: retries per request at most (0: never retry). The driver calls the
    ``on_*`` methods on its own threads with ``retry_num`` = retries so far; each
    returns ``(decision, consistency)`` with ``decision`` one of ``RETRY``,
    ``RETRY_NEXT_HOST`` or ``RETHROW``.
    """

    def __init__(self, max_retries: int = 3) -> None:
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int of 0 or more, not {max_retries!r}")
        super().__init__()
        self.max_retries = max_retries

    def on_read_timeout(
        self,
        query: Any,
        consistency: Any,
        required_responses: int,
        received_responses: int,
        data_retrieved: bool,
        retry_num: int,
    ) -> tuple[int, Any]:
        if retry_num >= min(1, self.max_retries):
            return self.RETHROW, None
        if received_responses >= required_responses and not data_retrieved:
            return self.RETRY, consistency
        return self.RETHROW, None

    def on_write_timeout(
        self,
        query: Any,
        consistency: Any,
        write_type: Any,
        required_responses: int,
        received_responses: int,
        retry_num: int,
    ) -> tuple[int, Any]:
        if retry_num >= self.max_retries or not _is_idempotent(query):
            return self.RETHROW, None
        if write_type in _RETRYABLE_WRITE_TYPES:
            return self.RETRY, consistency
        return self.RETHROW, None

    def on_unavailable(
        self,
        query: Any,
        consistency: Any,
        required_replicas: int,
        alive_replicas: int,
        retry_num: int,
    ) -> tuple[int, Any]:
        if retry_num >= min(1, self.max_retries):
            return self.RETHROW, None
        return self.RETRY_NEXT_HOST, None  # None: the same consistency

    def on_request_error(
        self,
        query: Any,
        consistency: Any,
        error: BaseException,
        retry_num: int,
    ) -> tuple[int, Any]:
        if retry_num >= self.max_retries or not _is_idempotent(query):
            return self.RETHROW, None
        return self.RETRY_NEXT_HOST, None

    def __repr__(self) -> str:
        return f"AsyncRetryPolicy(max_retries={self.max_retries})"


def _is_idempotent(query: Any) -> bool:
    # Only an explicit True: a statement of unknown kind is not assumed safe to repeat.
    return getattr(query, "is_idempotent", False) is True
