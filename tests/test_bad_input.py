"""Bad input gets a typed error with an actionable message, fast, and loses nothing.

Each case runs against real servers (the session node, an auth node, a TLS node and a
protocol-v4-only Simulacron node) and is followed by a query on the same session, which
must still work.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import cassandra
import cassandra.cluster
import pytest
from cassandra.query import BatchStatement, SimpleStatement

from async_cassandra import (
    AsyncCassandraSession,
    AsyncCluster,
    AuthenticationError,
    ConfigurationError,
    ConnectionError,
    QueryError,
)

pytestmark = pytest.mark.anyio


@dataclass
class Env:
    session: AsyncCassandraSession
    ks: str
    node: Any
    request: pytest.FixtureRequest


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def syntax_error(env: Env) -> None:
    await env.session.execute("SELEC * FROM system.local")


async def unknown_table(env: Env) -> None:
    await env.session.execute(f"SELECT * FROM {env.ks}.no_such_table")


async def unknown_keyspace(env: Env) -> None:
    await env.session.execute("SELECT * FROM no_such_keyspace.t")


async def too_many_parameters(env: Env) -> None:
    stmt = await env.session.prepare(f"SELECT * FROM {env.ks}.kv WHERE k = ?")
    await env.session.execute(stmt, [1, 2])


async def too_few_parameters_for_a_plain_string(env: Env) -> None:
    await env.session.execute(f"SELECT * FROM {env.ks}.kv WHERE k = %s AND v = %s", (1,))


async def wrong_parameter_type(env: Env) -> None:
    stmt = await env.session.prepare(f"SELECT * FROM {env.ks}.kv WHERE k = ?")
    await env.session.execute(stmt, ["not an int"])


async def parameters_not_a_sequence(env: Env) -> None:
    stmt = await env.session.prepare(f"SELECT * FROM {env.ks}.kv WHERE k = ?")
    await env.session.execute(stmt, 5)


async def question_mark_on_a_plain_string(env: Env) -> None:
    await env.session.execute(f"SELECT * FROM {env.ks}.kv WHERE k = ?", [1])


async def question_mark_on_a_simple_statement(env: Env) -> None:
    await env.session.execute(SimpleStatement(f"SELECT * FROM {env.ks}.kv WHERE k = ?"), [1])


async def prepare_true_on_a_simple_statement(env: Env) -> None:
    statement = SimpleStatement(f"SELECT * FROM {env.ks}.kv WHERE k = ?")
    await env.session.execute(statement, [1], prepare=True)


async def signing_key_too_short(env: Env) -> None:
    from async_cassandra.paging import PagingTokenSigner

    PagingTokenSigner(b"short")


async def invalid_keyspace_name(env: Env) -> None:
    await env.session.set_keyspace("bad-name; DROP KEYSPACE x")


async def set_keyspace_that_does_not_exist(env: Env) -> None:
    async with await env.request.getfixturevalue("cluster").connect() as other:
        await other.set_keyspace("no_such_keyspace")


async def batch_mixing_counter_and_regular(env: Env) -> None:
    batch = BatchStatement()
    batch.add(SimpleStatement(f"UPDATE {env.ks}.counters SET n = n + 1 WHERE k = 1"))
    batch.add(SimpleStatement(f"INSERT INTO {env.ks}.kv (k, v) VALUES (1, 1)"))
    await env.session.execute(batch)


async def invalid_prepare(env: Env) -> None:
    await env.session.prepare("SELECT FROM WHERE ?")


async def invalid_fetch_size(env: Env) -> None:
    await env.session.execute(f"SELECT * FROM {env.ks}.kv", fetch_size=-1)


async def execute_on_a_closed_session(env: Env) -> None:
    session = await env.request.getfixturevalue("cluster").connect()
    await session.close()
    await session.execute("SELECT * FROM system.local")


async def connect_on_a_shut_down_cluster(env: Env) -> None:
    cluster = AsyncCluster(env.node.contact_points, port=env.node.port)
    await cluster.shutdown()
    await cluster.connect()


async def connect_to_unknown_keyspace(env: Env) -> None:
    async with AsyncCluster(env.node.contact_points, port=env.node.port) as cluster:
        await cluster.connect("no_such_keyspace")


async def unreachable_contact_point(env: Env) -> None:
    port = _free_loopback_port()  # nothing listens there
    async with AsyncCluster(["127.0.0.1"], port=port, connect_timeout=2) as cluster:
        await cluster.connect()


async def wrong_password(env: Env) -> None:
    auth_node = env.request.getfixturevalue("cassandra_auth_node")
    cluster = AsyncCluster.create_with_auth(
        contact_points=auth_node.contact_points,
        username="cassandra",
        password="wrong",
        port=auth_node.port,
    )
    async with cluster:
        await cluster.connect()


async def tls_required_but_not_used(env: Env) -> None:
    tls_node = env.request.getfixturevalue("cassandra_tls_node")
    async with AsyncCluster(tls_node.contact_points, port=tls_node.port) as cluster:
        await cluster.connect()


async def protocol_version_4(env: Env) -> None:
    AsyncCluster(["127.0.0.1"], protocol_version=4)


async def unknown_cluster_option(env: Env) -> None:
    AsyncCluster(["127.0.0.1"], no_such_option=True)


async def server_speaks_only_v4(env: Env) -> None:
    simulacron = env.request.getfixturevalue("simulacron")
    async with AsyncCluster(simulacron.contact_points, port=simulacron.native_port) as cluster:
        await cluster.connect()


async def forced_v5_on_a_v4_only_server(env: Env) -> None:
    simulacron = env.request.getfixturevalue("simulacron")
    cluster = AsyncCluster(
        simulacron.contact_points, port=simulacron.native_port, protocol_version=5
    )
    async with cluster:
        await cluster.connect()


LONE_SURROGATE = "caf\udce9"  # what decoding bytes with errors="surrogateescape" leaves


async def unencodable_text_in_a_plain_string(env: Env) -> None:
    await env.session.execute(
        f"INSERT INTO {env.ks}.words (k, w) VALUES (%s, %s)", [1, LONE_SURROGATE]
    )


async def unencodable_text_in_a_statement(env: Env) -> None:
    await env.session.execute(SimpleStatement(f"SELECT * FROM {env.ks}.words -- {LONE_SURROGATE}"))


async def unencodable_text_bound_to_a_prepared_statement(env: Env) -> None:
    stmt = await env.session.prepare(f"INSERT INTO {env.ks}.words (k, w) VALUES (?, ?)")
    await env.session.execute(stmt, [1, LONE_SURROGATE])


async def unencodable_text_in_a_batch(env: Env) -> None:
    batch = BatchStatement()
    insert = SimpleStatement(f"INSERT INTO {env.ks}.words (k, w) VALUES (%s, %s)")
    batch.add(insert, (1, LONE_SURROGATE))
    await env.session.execute(batch)


async def unencodable_text_to_prepare(env: Env) -> None:
    await env.session.prepare(f"SELECT * FROM {env.ks}.words WHERE w = '{LONE_SURROGATE}'")


async def unencodable_text_with_prepare_true(env: Env) -> None:
    query = f"SELECT * FROM {env.ks}.words WHERE k = ? AND w = '{LONE_SURROGATE}'"
    await env.session.execute(query, [1], prepare=True)


async def custom_payload_with_a_str_value_to_prepare(env: Env) -> None:
    payload: Any = {"key": "text"}
    await env.session.prepare(f"SELECT * FROM {env.ks}.kv", payload)


async def connect_with_an_invalid_keyspace_name(env: Env) -> None:
    async with AsyncCluster(env.node.contact_points, port=env.node.port) as cluster:
        await cluster.connect(f"caf{LONE_SURROGATE}")


async def custom_payload_with_a_str_value(env: Env) -> None:
    payload: Any = {"key": "text"}
    await env.session.execute(f"SELECT * FROM {env.ks}.kv", custom_payload=payload)


async def consistency_level_by_name(env: Env) -> None:
    statement = SimpleStatement(f"SELECT * FROM {env.ks}.kv", consistency_level="QUORUM")
    await env.session.execute(statement)


async def host_given_as_an_address(env: Env) -> None:
    await env.session.execute(f"SELECT * FROM {env.ks}.kv", host="127.0.0.12")


async def paging_state_not_from_the_server(env: Env) -> None:
    await env.session.execute(
        f"SELECT * FROM {env.ks}.kv", fetch_size=10, paging_state=b"let me read other rows"
    )


async def paging_state_as_text(env: Env) -> None:
    state: Any = "abc"
    await env.session.execute(f"SELECT * FROM {env.ks}.kv", fetch_size=10, paging_state=state)


async def unknown_execution_profile(env: Env) -> None:
    await env.session.execute(f"SELECT * FROM {env.ks}.kv", execution_profile="no_such_profile")


async def execute_as_on_apache_cassandra(env: Env) -> None:
    await env.session.execute(f"SELECT * FROM {env.ks}.kv", execute_as="someone_else")


async def zero_max_concurrent_requests(env: Env) -> None:
    AsyncCluster(env.node.contact_points, port=env.node.port, max_concurrent_requests=0)


async def port_as_a_string(env: Env) -> None:
    port: Any = "9042"
    AsyncCluster(env.node.contact_points, port=port)


async def contact_points_as_one_string(env: Env) -> None:
    points: Any = "127.0.0.1"
    AsyncCluster(points)


# (case, our category, the driver (or built-in) class it must also be, message pattern)
CASES: list[tuple[Callable[[Env], Awaitable[None]], type[Exception], type[Exception], str]] = [
    (syntax_error, QueryError, cassandra.protocol.SyntaxException, "Syntax error"),
    (unknown_table, QueryError, cassandra.InvalidRequest, "table"),
    (unknown_keyspace, QueryError, cassandra.InvalidRequest, "no_such_keyspace"),
    (too_many_parameters, QueryError, ValueError, "Too many arguments"),
    (too_few_parameters_for_a_plain_string, QueryError, TypeError, "not enough arguments"),
    (wrong_parameter_type, QueryError, TypeError, r'parameter 1 \("k", a CQL int\).*str'),
    (parameters_not_a_sequence, QueryError, TypeError, "Could not bind the parameters"),
    (question_mark_on_a_plain_string, QueryError, QueryError, "prepare"),
    (question_mark_on_a_simple_statement, QueryError, QueryError, "bind markers.*prepare"),
    (prepare_true_on_a_simple_statement, QueryError, TypeError, "prepare=True prepares a CQL"),
    (signing_key_too_short, ConfigurationError, ValueError, "at least 16 bytes"),
    (invalid_keyspace_name, QueryError, QueryError, "not a valid keyspace name"),
    (set_keyspace_that_does_not_exist, QueryError, cassandra.InvalidRequest, "no_such_keyspace"),
    (batch_mixing_counter_and_regular, QueryError, cassandra.InvalidRequest, "ounter"),
    (invalid_prepare, QueryError, cassandra.protocol.SyntaxException, "Syntax error"),
    (invalid_fetch_size, QueryError, QueryError, "fetch_size"),
    (execute_on_a_closed_session, ConnectionError, ConnectionError, "session is closed"),
    (connect_on_a_shut_down_cluster, ConnectionError, ConnectionError, "shut down"),
    (
        connect_to_unknown_keyspace,
        QueryError,
        cassandra.cluster.NoHostAvailable,
        "no_such_keyspace.*Check that the keyspace exists",
    ),
    (
        unreachable_contact_point,
        ConnectionError,
        cassandra.cluster.NoHostAvailable,
        "check that Cassandra is running",
    ),
    (
        wrong_password,
        AuthenticationError,
        cassandra.cluster.NoHostAvailable,
        "Bad credentials.*Check the username and password",
    ),
    (
        tls_required_but_not_used,
        ConnectionError,
        cassandra.cluster.NoHostAvailable,
        "TLS settings",
    ),
    (
        protocol_version_4,
        ConfigurationError,
        ConfigurationError,
        "Protocol version 4 is not supported. async-cassandra requires CQL protocol v5",
    ),
    (unknown_cluster_option, ConfigurationError, ConfigurationError, "no_such_option"),
    (
        server_speaks_only_v4,
        ConfigurationError,
        ConfigurationError,
        "Protocol version 4 is not supported.*v5 or higher.*4.0.*negotiated v4",
    ),
    (
        forced_v5_on_a_v4_only_server,
        ConfigurationError,
        cassandra.cluster.NoHostAvailable,
        "does not speak CQL protocol v5.*Cassandra 4.0",
    ),
    (unencodable_text_in_a_plain_string, QueryError, ValueError, r"'\\udce9'.*UTF-8"),
    (unencodable_text_in_a_statement, QueryError, ValueError, r"'\\udce9'.*UTF-8"),
    (
        unencodable_text_bound_to_a_prepared_statement,
        QueryError,
        ValueError,
        r'parameter 2 \("w", a CQL text\).*surrogates not allowed',
    ),
    (unencodable_text_in_a_batch, QueryError, ValueError, r"statement in the batch.*UTF-8"),
    (unencodable_text_to_prepare, QueryError, ValueError, r"text to prepare.*'\\udce9'"),
    (unencodable_text_with_prepare_true, QueryError, ValueError, r"text to prepare.*'\\udce9'"),
    (
        custom_payload_with_a_str_value_to_prepare,
        QueryError,
        TypeError,
        r"custom_payload\['key'\] must be bytes",
    ),
    (connect_with_an_invalid_keyspace_name, QueryError, ValueError, "not a valid keyspace name"),
    (
        custom_payload_with_a_str_value,
        QueryError,
        TypeError,
        r"custom_payload\['key'\] must be bytes",
    ),
    (consistency_level_by_name, QueryError, TypeError, "consistency_level must be"),
    (host_given_as_an_address, QueryError, TypeError, "host must be a cassandra.pool.Host"),
    (paging_state_not_from_the_server, QueryError, ValueError, "PagingTokenSigner"),
    (paging_state_as_text, QueryError, TypeError, "paging_state must be the bytes"),
    (unknown_execution_profile, QueryError, ValueError, r"^Invalid execution_profile[^.]*\.[^.]*$"),
    (execute_as_on_apache_cassandra, ConfigurationError, ConfigurationError, "DataStax Enterprise"),
    (zero_max_concurrent_requests, ConfigurationError, ConfigurationError, "max_concurrent"),
    (port_as_a_string, ConfigurationError, ConfigurationError, "port must be an int"),
    (contact_points_as_one_string, ConfigurationError, ConfigurationError, "a list of host"),
]


@pytest.fixture
async def env(
    session: AsyncCassandraSession, ks: str, cassandra_node: Any, request: pytest.FixtureRequest
) -> Env:
    await session.execute(f"CREATE TABLE {ks}.kv (k int PRIMARY KEY, v int)")
    await session.execute(f"CREATE TABLE {ks}.counters (k int PRIMARY KEY, n counter)")
    await session.execute(f"CREATE TABLE {ks}.words (k int PRIMARY KEY, w text)")
    return Env(session, ks, cassandra_node, request)


@pytest.mark.parametrize(
    ("case", "category", "also", "message"),
    CASES,
    ids=[case.__name__ for case, *_ in CASES],
)
async def test_bad_input_raises_its_documented_class(
    env: Env,
    case: Callable[[Env], Awaitable[None]],
    category: type[Exception],
    also: type[Exception],
    message: str,
) -> None:
    began = time.perf_counter()
    with pytest.raises(category, match=message) as caught:
        await case(env)
    elapsed = time.perf_counter() - began
    error = caught.value
    assert isinstance(error, also)
    if also.__module__.startswith("cassandra"):
        # A driver error re-raised as ours keeps the original as its cause.
        assert isinstance(error.__cause__, also)
    print(f"{case.__name__}: {type(error).__name__} in {elapsed * 1000:.0f} ms: {error}")
    # Nothing was lost: the same session still serves queries.
    await env.session.execute(f"INSERT INTO {env.ks}.kv (k, v) VALUES (7, 7)")
    assert (await env.session.execute(f"SELECT v FROM {env.ks}.kv WHERE k = 7")).one().v == 7
    assert env.session.requests_in_flight == 0


def test_there_are_at_least_fifteen_cases() -> None:
    assert len(CASES) >= 15


def test_a_v4_refusal_is_not_retried_or_wrapped_twice(simulacron: Any) -> None:
    import anyio

    async def connect() -> ConfigurationError:
        cluster = AsyncCluster(simulacron.contact_points, port=simulacron.native_port)
        with pytest.raises(ConfigurationError) as caught:
            await cluster.connect()
        assert cluster.is_closed  # nothing to retry with: the cluster was shut down
        return caught.value

    error = anyio.run(connect)
    assert type(error) is ConfigurationError  # ours, not a driver error wrapped again
    assert error.__cause__ is None
    assert str(error).count("requires CQL protocol v5") == 1


async def test_a_hint_is_given_only_to_its_case(env: Env) -> None:
    # The binding hint belongs to binding errors; an unknown profile is not one.
    with pytest.raises(QueryError) as caught:
        await unknown_execution_profile(env)
    assert "bind" not in str(caught.value)
    assert str(caught.value) == str(caught.value.__cause__)  # the driver's text, whole


async def test_question_marks_in_literals_and_comments_are_not_markers(env: Env) -> None:
    # The driver runs these (no parameters to fill: the `?` are text, not markers).
    for statement in [
        f"INSERT INTO {env.ks}.words (k, w) VALUES (1, 'what?')",
        f"INSERT INTO {env.ks}.words (k, w) VALUES (2, $$really? it's fine$$)",
        f"INSERT INTO {env.ks}.words (k, w) VALUES (3, 'x') /* why? */",
        # The server ends a -- comment at a newline only.
        f"INSERT INTO {env.ks}.words (k, w) VALUES (4, 'y') -- why not?\n",
    ]:
        await env.session.execute(statement, [])
    rows = await env.session.execute(f"SELECT k, w FROM {env.ks}.words")
    assert sorted(tuple(row) for row in rows) == [
        (1, "what?"),
        (2, "really? it's fine"),
        (3, "x"),
        (4, "y"),
    ]
    with pytest.raises(QueryError, match="bind markers"):  # a real marker is still refused
        await env.session.execute(f"SELECT * FROM {env.ks}.words WHERE k = ? -- $$\n", [1])


BAD_REQUESTS = 100_000


async def test_a_hundred_thousand_unencodable_requests_leave_the_session_serving(
    env: Env,
) -> None:
    # Each would have leaked one of the connection's 32,768 stream ids inside the
    # driver (taken before the request is encoded, never given back): after that many,
    # every request on the session failed until the connection was replaced.
    prepared = await env.session.prepare(f"INSERT INTO {env.ks}.words (k, w) VALUES (?, ?)")
    plain = f"INSERT INTO {env.ks}.words (k, w) VALUES (%s, %s)"
    unpreparable = f"SELECT * FROM {env.ks}.words WHERE w = '{LONE_SURROGATE}'"
    refused = 0
    for i in range(BAD_REQUESTS):
        try:
            if i % 3 == 0:
                await env.session.execute(plain, [i, LONE_SURROGATE])
            elif i % 3 == 1:
                await env.session.execute(prepared, [i, LONE_SURROGATE])
            else:
                await env.session.prepare(unpreparable)
        except QueryError:
            refused += 1
    assert refused == BAD_REQUESTS
    assert env.session.requests_in_flight == 0
    assert env.session.requests_registered == 0
    for i in range(1000):
        statement = plain if i % 2 else prepared
        await env.session.execute(statement, [i, f"word {i}"])
    count = await env.session.execute(f"SELECT count(*) FROM {env.ks}.words")
    assert count.one().count == 1000
