"""Run a real Apache Cassandra (and Simulacron) locally for tests and demos.

``LocalCassandra`` starts nodes on loopback addresses from the server jars on Maven
Central, and fails them one at a time for tests (``kill``, ``pause`` / ``resume``,
``stop_node`` / ``start_node``); ``Simulacron`` starts DataStax's protocol-v4 fake node
for fault tests. The
pytest fixtures are in ``async_cassandra.testing.pytest_plugin`` (enable with
``-p async_cassandra.testing.pytest_plugin``); ``python -m async_cassandra.testing``
starts and stops a node from the shell.
"""

from ._maven import CASSANDRA_VERSION, SIMULACRON_VERSION, LauncherError, cache_dir
from ._node import LocalCassandra
from ._simulacron import Simulacron

__all__ = [
    "CASSANDRA_VERSION",
    "SIMULACRON_VERSION",
    "LauncherError",
    "LocalCassandra",
    "Simulacron",
    "cache_dir",
]
