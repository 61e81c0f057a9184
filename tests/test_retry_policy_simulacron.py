"""AsyncRetryPolicy as the driver runs it: attempts per node against three Simulacron nodes.

Each fault is primed on every node of ``simulacron3`` and a statement is run through
the plain driver (protocol v4: Simulacron cannot speak the v5 our library requires; the
retry policy is a driver policy, so this is how it runs) with the policy in its
execution profile. The driver tries node 0 first, then 1, then 2
(``Simulacron.driver_cluster()``), so the attempts each node logged must be exactly
what the decision table in :mod:`async_cassandra.retry_policy` says, and the error that
ends the request must carry what the server said.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cassandra import ConsistencyLevel, ReadTimeout, Unavailable, WriteTimeout
from cassandra.cluster import EXEC_PROFILE_DEFAULT, NoHostAvailable
from cassandra.connection import ConnectionShutdown
from cassandra.policies import RetryPolicy, WriteType
from cassandra.protocol import (
    IsBootstrappingErrorMessage,
    OverloadedErrorMessage,
    ServerError,
    TruncateError,
)
from cassandra.query import SimpleStatement

from async_cassandra.retry_policy import AsyncRetryPolicy
from async_cassandra.testing import Simulacron

WRITE = "INSERT INTO retry_test.t (k, v) VALUES (1, 'a')"
READ = "SELECT v FROM retry_test.t WHERE k = 1"
IDEMPOTENCY = pytest.mark.parametrize("idempotent", [True, False], ids=["idempotent", "not"])


@pytest.fixture
def sim(simulacron3: Simulacron) -> Simulacron:
    return simulacron3


@pytest.fixture
def cluster(sim: Simulacron) -> Iterator[Any]:
    """A driver of this test's own (a closed connection marks its node down for a
    while): AsyncRetryPolicy() in the default profile, node 0 tried first."""
    driver_cluster = sim.driver_cluster(retry_policy=AsyncRetryPolicy())
    try:
        yield driver_cluster
    finally:
        driver_cluster.shutdown()


Run = Callable[..., Any]


@pytest.fixture
def run(sim: Simulacron, cluster: Any) -> Run:
    """``run(query, idempotent, policy=AsyncRetryPolicy())``: execute ``query`` as a
    SimpleStatement with the retry policy in an execution profile."""
    session = sim.driver_session(cluster)

    def execute(query: str, idempotent: bool, policy: Any = None) -> Any:
        profile = session.execution_profile_clone_update(
            EXEC_PROFILE_DEFAULT, retry_policy=policy or AsyncRetryPolicy()
        )
        statement = SimpleStatement(query, is_idempotent=idempotent)
        return session.execute(statement, execution_profile=profile, timeout=5)

    return execute


def _node0(count: int) -> dict[int, int]:
    return {0: count, 1: 0, 2: 0}


# ------------------------------------------------------------------ read timeout


@IDEMPOTENCY
@pytest.mark.parametrize(
    ("received", "block_for", "data_present", "attempts"),
    [
        (2, 2, False, 2),  # enough replicas, not the data one: read again, same node
        (3, 2, False, 2),
        (1, 2, False, 1),  # too few replicas answered
        (2, 2, True, 1),  # the data was there: a second read would time out the same
        (0, 1, True, 1),
    ],
)
def test_read_timeout(
    sim: Simulacron,
    run: Run,
    idempotent: bool,
    received: int,
    block_for: int,
    data_present: bool,
    attempts: int,
) -> None:
    sim.prime_read_timeout(
        READ,
        consistency="QUORUM",
        received=received,
        block_for=block_for,
        data_present=data_present,
    )
    with pytest.raises(ReadTimeout) as caught:
        run(READ, idempotent)
    assert sim.attempts(READ) == _node0(attempts)
    error = caught.value
    assert (error.consistency, error.required_responses, error.received_responses) == (
        ConsistencyLevel.QUORUM,
        block_for,
        received,
    )
    assert error.data_retrieved is data_present


def test_read_timeout_with_max_retries_0_is_not_retried(sim: Simulacron, run: Run) -> None:
    sim.prime_read_timeout(READ, received=2, block_for=2, data_present=False)
    with pytest.raises(ReadTimeout):
        run(READ, True, AsyncRetryPolicy(max_retries=0))
    assert sim.attempts(READ) == _node0(1)


# ----------------------------------------------------------------- write timeout


@pytest.mark.parametrize("write_type", ["SIMPLE", "BATCH", "UNLOGGED_BATCH", "BATCH_LOG"])
@pytest.mark.parametrize("max_retries", [3, 1])
def test_write_timeout_idempotent_is_retried_on_the_same_node(
    sim: Simulacron, run: Run, write_type: Any, max_retries: int
) -> None:
    sim.prime_write_timeout(
        WRITE, consistency="LOCAL_QUORUM", received=1, block_for=2, write_type=write_type
    )
    with pytest.raises(WriteTimeout) as caught:
        run(WRITE, True, AsyncRetryPolicy(max_retries=max_retries))
    assert sim.attempts(WRITE) == _node0(1 + max_retries)
    error = caught.value
    assert (
        error.consistency,
        error.required_responses,
        error.received_responses,
        error.write_type,
    ) == (ConsistencyLevel.LOCAL_QUORUM, 2, 1, getattr(WriteType, write_type))


@pytest.mark.parametrize(
    ("write_type", "idempotent"),
    [
        ("SIMPLE", False),
        ("BATCH", False),
        ("COUNTER", True),
        ("CAS", True),
        ("VIEW", True),
        ("CDC", True),
        ("COUNTER", False),
    ],
)
def test_write_timeout_not_retried(
    sim: Simulacron, run: Run, write_type: Any, idempotent: bool
) -> None:
    sim.prime_write_timeout(
        WRITE, consistency="QUORUM", received=0, block_for=2, write_type=write_type
    )
    with pytest.raises(WriteTimeout) as caught:
        run(WRITE, idempotent)
    assert sim.attempts(WRITE) == _node0(1)
    error = caught.value
    assert (
        error.consistency,
        error.required_responses,
        error.received_responses,
        error.write_type,
    ) == (ConsistencyLevel.QUORUM, 2, 0, getattr(WriteType, write_type))


def test_write_timeout_of_a_prepared_statement(sim: Simulacron, cluster: Any) -> None:
    # A bound statement inherits is_idempotent from its prepared statement.
    session = sim.driver_session(cluster)
    sim.prime_write_timeout(WRITE, write_type="SIMPLE")
    prepared = session.prepare(WRITE)
    with pytest.raises(WriteTimeout):
        session.execute(prepared)
    assert sim.attempts(WRITE) == _node0(1)
    sim.clear_activity()
    prepared.is_idempotent = True
    with pytest.raises(WriteTimeout):
        session.execute(prepared)
    assert sim.attempts(WRITE) == _node0(4)


# ------------------------------------------------------------------- unavailable


@IDEMPOTENCY
def test_unavailable_is_tried_once_on_the_next_node(
    sim: Simulacron, run: Run, idempotent: bool
) -> None:
    sim.prime_unavailable(WRITE, consistency="ALL", required=3, alive=2)
    with pytest.raises(Unavailable) as caught:
        run(WRITE, idempotent)
    assert sim.attempts(WRITE) == {0: 1, 1: 1, 2: 0}
    error = caught.value
    assert (error.consistency, error.required_replicas, error.alive_replicas) == (
        ConsistencyLevel.ALL,
        3,
        2,
    )


def test_unavailable_with_max_retries_0_is_not_retried(sim: Simulacron, run: Run) -> None:
    sim.prime_unavailable(WRITE)
    with pytest.raises(Unavailable):
        run(WRITE, True, AsyncRetryPolicy(max_retries=0))
    assert sim.attempts(WRITE) == _node0(1)


# ----------------------------------------------------------------- request errors

# Each request error: how to prime it, the error each attempt gets, its fields.
REQUEST_ERRORS: list[tuple[str, Callable[[Simulacron], None], type[Exception], dict[str, Any]]] = [
    (
        "overloaded",
        lambda sim: sim.prime_overloaded(WRITE, message="busy"),
        OverloadedErrorMessage,
        {"code": 0x1001, "message": "busy"},
    ),
    (
        "server_error",
        lambda sim: sim.prime_server_error(WRITE, message="boom"),
        ServerError,
        {"code": 0x0000, "message": "boom"},
    ),
    (
        "is_bootstrapping",
        lambda sim: sim.prime_is_bootstrapping(WRITE),
        IsBootstrappingErrorMessage,
        {"code": 0x1002},
    ),
    (
        "truncate_error",
        lambda sim: sim.prime_truncate_error(WRITE, message="no"),
        TruncateError,
        {"code": 0x1003, "message": "no"},
    ),
    (
        "close_connection",
        lambda sim: sim.prime_close_connection(WRITE),
        ConnectionShutdown,
        {},
    ),
]
REQUEST_ERROR = pytest.mark.parametrize(
    ("prime", "error", "fields"),
    [case[1:] for case in REQUEST_ERRORS],
    ids=[case[0] for case in REQUEST_ERRORS],
)


def _fields(error: BaseException, fields: dict[str, Any]) -> dict[str, Any]:
    return {name: getattr(error, name) for name in fields}


@REQUEST_ERROR
def test_request_error_not_idempotent_is_never_sent_again(
    sim: Simulacron,
    run: Run,
    prime: Callable[[Simulacron], None],
    error: type[Exception],
    fields: dict[str, Any],
) -> None:
    prime(sim)
    with pytest.raises(error) as caught:
        run(WRITE, False)
    assert sim.attempts(WRITE) == _node0(1)
    assert _fields(caught.value, fields) == fields


@REQUEST_ERROR
def test_request_error_idempotent_is_tried_on_each_node(
    sim: Simulacron,
    run: Run,
    prime: Callable[[Simulacron], None],
    error: type[Exception],
    fields: dict[str, Any],
) -> None:
    prime(sim)
    # max_retries 3 would allow a fourth attempt; there are three nodes to try.
    with pytest.raises(NoHostAvailable) as caught:
        run(WRITE, True)
    assert sim.attempts(WRITE) == {0: 1, 1: 1, 2: 1}
    errors = caught.value.errors
    assert sorted(host.address for host in errors) == sim.contact_points
    for each in errors.values():
        assert isinstance(each, error)
        assert _fields(each, fields) == fields


@REQUEST_ERROR
@pytest.mark.parametrize(("max_retries", "attempts"), [(1, {0: 1, 1: 1, 2: 0}), (0, _node0(1))])
def test_request_error_idempotent_up_to_max_retries(
    sim: Simulacron,
    run: Run,
    prime: Callable[[Simulacron], None],
    error: type[Exception],
    fields: dict[str, Any],
    max_retries: int,
    attempts: dict[int, int],
) -> None:
    prime(sim)
    with pytest.raises(error) as caught:  # the last node's answer, as it is
        run(WRITE, True, AsyncRetryPolicy(max_retries=max_retries))
    assert sim.attempts(WRITE) == attempts
    assert _fields(caught.value, fields) == fields


def test_a_plain_string_is_not_idempotent(sim: Simulacron, cluster: Any) -> None:
    session = sim.driver_session(cluster)
    sim.prime_overloaded(WRITE)
    with pytest.raises(OverloadedErrorMessage):
        session.execute(WRITE)
    assert sim.attempts(WRITE) == _node0(1)


def test_the_drivers_own_policy_sends_a_non_idempotent_write_to_every_node(
    sim: Simulacron, run: Run
) -> None:
    # Why AsyncRetryPolicy exists: the driver's RetryPolicy answers "overloaded" with
    # "next host" whatever the statement, so an INSERT the first coordinator may have
    # applied is sent to the others too.
    sim.prime_overloaded(WRITE)
    with pytest.raises(NoHostAvailable):
        run(WRITE, False, RetryPolicy())
    assert sim.attempts(WRITE) == {0: 1, 1: 1, 2: 1}
    sim.clear_activity()
    with pytest.raises(OverloadedErrorMessage):
        run(WRITE, False, AsyncRetryPolicy())
    assert sim.attempts(WRITE) == _node0(1)
