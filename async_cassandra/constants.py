"""Default values and limits, under the names async-cassandra 0.0.1 gave them.

Code written for 0.0.1 imports these (its FastAPI example sizes its rate limiter with
``MAX_CONCURRENT_QUERIES``); the values are 0.0.1's. Where this library uses one, the
comment says where; the others are kept for that code only.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_CONNECTION_TIMEOUT",
    "DEFAULT_EXECUTOR_THREADS",
    "DEFAULT_FETCH_SIZE",
    "DEFAULT_REQUEST_TIMEOUT",
    "MAX_CONCURRENT_QUERIES",
    "MAX_EXECUTOR_THREADS",
    "MAX_RETRY_ATTEMPTS",
    "MIN_EXECUTOR_THREADS",
]

# Rows per page of a stream (StreamConfig.fetch_size's default).
DEFAULT_FETCH_SIZE = 1000
# 0.0.1's suggestion for AsyncCluster(executor_threads=...); the driver's default is 2.
DEFAULT_EXECUTOR_THREADS = 4
# Seconds AsyncCluster.connect() may take when given no timeout.
DEFAULT_CONNECTION_TIMEOUT = 30.0
# 0.0.1's default prepare timeout, in seconds. Here prepare() defaults to the driver
# session's default_timeout, as the driver's own prepare does.
DEFAULT_REQUEST_TIMEOUT = 120.0

# Concurrent queries 0.0.1's examples allowed an application (its rate limiter). The
# in-flight bound of a session here is max_concurrent_requests (1024 per host).
MAX_CONCURRENT_QUERIES = 100
# Attempts of 0.0.1's connect() and of its AsyncRetryPolicy(max_retries=...).
MAX_RETRY_ATTEMPTS = 3

# 0.0.1's bounds for executor_threads.
MIN_EXECUTOR_THREADS = 1
MAX_EXECUTOR_THREADS = 128
