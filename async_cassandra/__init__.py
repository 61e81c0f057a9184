"""async-cassandra: the Cassandra client for async Python, on asyncio and trio.

Correct under structured concurrency: cancel scopes, deadlines and task groups hold for
database work. Wraps the official ``cassandra-driver``.
"""

from .cluster import AsyncCluster
from .exceptions import (
    AsyncCassandraError,
    AuthenticationError,
    ConfigurationError,
    ConnectionError,
    QueryError,
    TimeoutError,
)
from .result import AsyncResultSet
from .session import AsyncCassandraSession

__version__ = "0.1.0"

__all__ = [
    "AsyncCassandraError",
    "AsyncCassandraSession",
    "AsyncCluster",
    "AsyncResultSet",
    "AuthenticationError",
    "ConfigurationError",
    "ConnectionError",
    "QueryError",
    "TimeoutError",
    "__version__",
]
