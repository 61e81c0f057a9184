"""AsyncRetryPolicy's decision table, row by row (unit tests: the driver calls these
methods on its threads with exactly these arguments)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from cassandra import ConsistencyLevel
from cassandra.connection import ConnectionShutdown
from cassandra.policies import RetryPolicy, WriteType
from cassandra.protocol import (
    IsBootstrappingErrorMessage,
    OverloadedErrorMessage,
    ServerError,
    TruncateError,
)
from cassandra.query import BatchStatement, SimpleStatement

from async_cassandra.retry_policy import AsyncRetryPolicy

RETRY, RETHROW, NEXT = RetryPolicy.RETRY, RetryPolicy.RETHROW, RetryPolicy.RETRY_NEXT_HOST
QUORUM = ConsistencyLevel.QUORUM

IDEMPOTENT = SimpleStatement("UPDATE t SET v = 1 WHERE k = 1", is_idempotent=True)
NOT_IDEMPOTENT = SimpleStatement("UPDATE t SET n = n + 1 WHERE k = 1")
IDEMPOTENT_BATCH = BatchStatement()
IDEMPOTENT_BATCH.is_idempotent = True


def read_timeout(policy: AsyncRetryPolicy, received: int, data: bool, retry_num: int) -> Any:
    return policy.on_read_timeout(NOT_IDEMPOTENT, QUORUM, 2, received, data, retry_num)


@pytest.mark.parametrize(
    ("received", "data", "retry_num", "expected"),
    [
        (2, False, 0, (RETRY, QUORUM)),  # enough answered, the data replica was slow
        (2, True, 0, (RETHROW, None)),  # the data came back: a retry would not help
        (1, False, 0, (RETHROW, None)),  # not enough replicas answered
        (2, False, 1, (RETHROW, None)),  # once only
    ],
)
def test_read_timeouts(received: int, data: bool, retry_num: int, expected: Any) -> None:
    assert read_timeout(AsyncRetryPolicy(), received, data, retry_num) == expected


@pytest.mark.parametrize(
    ("write_type", "retried"),
    [
        (WriteType.SIMPLE, True),
        (WriteType.BATCH, True),
        (WriteType.UNLOGGED_BATCH, True),
        (WriteType.BATCH_LOG, True),
        (WriteType.COUNTER, False),
        (WriteType.CAS, False),
        (WriteType.VIEW, False),
        (WriteType.CDC, False),
    ],
)
def test_write_timeouts_of_an_idempotent_statement(write_type: Any, retried: bool) -> None:
    policy = AsyncRetryPolicy(max_retries=3)
    for query in (IDEMPOTENT, IDEMPOTENT_BATCH):
        decision = policy.on_write_timeout(query, QUORUM, write_type, 2, 1, 0)
        assert decision == ((RETRY, QUORUM) if retried else (RETHROW, None))
    # Up to max_retries, not one more.
    assert policy.on_write_timeout(IDEMPOTENT, QUORUM, write_type, 2, 1, 2)[0] == (
        RETRY if retried else RETHROW
    )
    assert policy.on_write_timeout(IDEMPOTENT, QUORUM, write_type, 2, 1, 3) == (RETHROW, None)


@pytest.mark.parametrize(
    "write_type",
    [WriteType.SIMPLE, WriteType.BATCH, WriteType.UNLOGGED_BATCH, WriteType.BATCH_LOG],
)
def test_write_timeouts_of_a_statement_not_marked_idempotent_are_never_retried(
    write_type: Any,
) -> None:
    policy = AsyncRetryPolicy()
    for query in (NOT_IDEMPOTENT, BatchStatement(), "a string", None):
        assert policy.on_write_timeout(query, QUORUM, write_type, 2, 1, 0) == (RETHROW, None)
    truthy_but_not_true = SimpleStatement("x")
    truthy_but_not_true.is_idempotent = 1
    assert policy.on_write_timeout(truthy_but_not_true, QUORUM, write_type, 2, 1, 0)[0] == RETHROW


@pytest.mark.parametrize("query", [IDEMPOTENT, NOT_IDEMPOTENT])
def test_unavailable_is_tried_once_on_the_next_host(query: Any) -> None:
    policy = AsyncRetryPolicy()
    assert policy.on_unavailable(query, QUORUM, 2, 1, 0) == (NEXT, None)
    assert policy.on_unavailable(query, QUORUM, 2, 1, 1) == (RETHROW, None)


REQUEST_ERRORS = [
    OverloadedErrorMessage(0x1001, "overloaded", {}),
    ServerError(0x0000, "server error", {}),
    IsBootstrappingErrorMessage(0x1002, "bootstrapping", {}),
    TruncateError(0x1003, "truncate", {}),
    ConnectionShutdown("connection closed"),
]


@pytest.mark.parametrize("error", REQUEST_ERRORS, ids=lambda e: type(e).__name__)
def test_request_errors_go_to_the_next_host_only_when_idempotent(error: Exception) -> None:
    policy = AsyncRetryPolicy(max_retries=3)
    # The driver's own RetryPolicy retries this INSERT, so it can be applied twice.
    assert RetryPolicy().on_request_error(NOT_IDEMPOTENT, QUORUM, error, 0)[0] == NEXT
    assert policy.on_request_error(NOT_IDEMPOTENT, QUORUM, error, 0) == (RETHROW, None)
    for retry_num in range(3):
        assert policy.on_request_error(IDEMPOTENT, QUORUM, error, retry_num) == (NEXT, None)
    assert policy.on_request_error(IDEMPOTENT, QUORUM, error, 3) == (RETHROW, None)


def test_max_retries_zero_never_retries() -> None:
    policy = AsyncRetryPolicy(max_retries=0)
    assert read_timeout(policy, 2, False, 0) == (RETHROW, None)
    assert policy.on_write_timeout(IDEMPOTENT, QUORUM, WriteType.SIMPLE, 2, 1, 0)[0] == RETHROW
    assert policy.on_unavailable(IDEMPOTENT, QUORUM, 2, 1, 0)[0] == RETHROW
    assert policy.on_request_error(IDEMPOTENT, QUORUM, REQUEST_ERRORS[0], 0)[0] == RETHROW


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True, None])
def test_max_retries_is_checked(bad: Any) -> None:
    with pytest.raises(ValueError, match="max_retries"):
        AsyncRetryPolicy(max_retries=bad)


def test_the_0_0_1_name_and_argument() -> None:
    import async_cassandra

    policy = async_cassandra.AsyncRetryPolicy(max_retries=5)
    assert isinstance(policy, RetryPolicy)
    assert policy.max_retries == 5
    assert AsyncRetryPolicy().max_retries == 3


# -- installed by AsyncCluster ----------------------------------------------------------


def _default_profile(cluster: Any) -> Any:
    from cassandra.cluster import EXEC_PROFILE_DEFAULT

    return cluster.driver_cluster.profile_manager.profiles[EXEC_PROFILE_DEFAULT]


def test_an_async_cluster_retries_with_async_retry_policy_by_default() -> None:
    from async_cassandra import AsyncCluster

    cluster = AsyncCluster(["127.0.0.1"])  # no I/O until connect()
    assert isinstance(_default_profile(cluster).retry_policy, AsyncRetryPolicy)
    # Also once the driver is switched to its legacy mode (session.row_factory = ...).
    assert isinstance(cluster.driver_cluster.default_retry_policy, AsyncRetryPolicy)
    reconnection = cluster.driver_cluster.reconnection_policy
    assert (reconnection.base_delay, reconnection.max_delay) == (1.0, 60.0)
    delays = list(itertools.islice(reconnection.new_schedule(), 20))
    # The driver adds up to 15% of jitter to each delay, within [base, max].
    assert 0.85 <= delays[0] <= 1.15
    assert max(delays) <= 60.0  # not the driver's 600 s
    assert delays[-1] >= 60.0 * 0.85
    assert reconnection.max_attempts is None  # for ever


def test_a_users_policies_are_left_alone() -> None:
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, ExecutionProfile
    from cassandra.policies import (
        ConstantReconnectionPolicy,
        DCAwareRoundRobinPolicy,
        FallthroughRetryPolicy,
    )

    from async_cassandra import AsyncCluster

    mine = FallthroughRetryPolicy()
    with pytest.warns(DeprecationWarning, match="Legacy execution parameters"):
        cluster = AsyncCluster(["127.0.0.1"], retry_policy=mine)
    assert cluster.driver_cluster.default_retry_policy is mine

    lbp = DCAwareRoundRobinPolicy()
    own_default = ExecutionProfile(load_balancing_policy=lbp, retry_policy=mine)
    cluster = AsyncCluster(["127.0.0.1"], execution_profiles={EXEC_PROFILE_DEFAULT: own_default})
    assert _default_profile(cluster).retry_policy is mine

    named = ExecutionProfile(load_balancing_policy=lbp, retry_policy=mine)
    cluster = AsyncCluster(["127.0.0.1"], execution_profiles={"analytics": named})
    assert cluster.driver_cluster.profile_manager.profiles["analytics"].retry_policy is mine
    assert isinstance(_default_profile(cluster).retry_policy, AsyncRetryPolicy)

    constant = ConstantReconnectionPolicy(5.0)
    cluster = AsyncCluster(["127.0.0.1"], reconnection_policy=constant)
    assert cluster.driver_cluster.reconnection_policy is constant
