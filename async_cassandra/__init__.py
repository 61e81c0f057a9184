"""async-cassandra: the Cassandra client for async Python, on asyncio and trio.

Correct under structured concurrency: cancel scopes, deadlines and task groups hold for
database work. Wraps the official ``cassandra-driver``. The names are those of
async-cassandra 0.0.1, so code written for it runs unchanged.
"""

from .cluster import AsyncCluster
from .exceptions import (
    AsyncCassandraError,
    AuthenticationError,
    ConfigurationError,
    ConnectionError,
    ConnectTimeoutError,
    QueryError,
    TimeoutError,
)
from .metrics import (
    ConnectionMetrics,
    InMemoryMetricsCollector,
    MetricsCollector,
    MetricsMiddleware,
    PrometheusMetricsCollector,
    QueryMetrics,
    create_metrics_system,
)
from .monitoring import (
    HOST_STATUS_DOWN,
    HOST_STATUS_UNKNOWN,
    HOST_STATUS_UP,
    ClusterMetrics,
    ConnectionMonitor,
    HostMetrics,
    RateLimitedSession,
    create_monitored_session,
)
from .observers import RequestObserver
from .result import AsyncResultSet
from .retry_policy import AsyncRetryPolicy
from .session import AsyncCassandraSession
from .streaming import AsyncStreamingResultSet, StreamConfig, create_streaming_statement

__version__ = "0.1.0"

__all__ = [
    "HOST_STATUS_DOWN",
    "HOST_STATUS_UNKNOWN",
    "HOST_STATUS_UP",
    "AsyncCassandraError",
    "AsyncCassandraSession",
    "AsyncCluster",
    "AsyncResultSet",
    "AsyncRetryPolicy",
    "AsyncStreamingResultSet",
    "AuthenticationError",
    "ClusterMetrics",
    "ConfigurationError",
    "ConnectTimeoutError",
    "ConnectionError",
    "ConnectionMetrics",
    "ConnectionMonitor",
    "HostMetrics",
    "InMemoryMetricsCollector",
    "MetricsCollector",
    "MetricsMiddleware",
    "PrometheusMetricsCollector",
    "QueryError",
    "QueryMetrics",
    "RateLimitedSession",
    "RequestObserver",
    "StreamConfig",
    "TimeoutError",
    "__version__",
    "create_metrics_system",
    "create_monitored_session",
    "create_streaming_statement",
]
