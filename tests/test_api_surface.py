"""The public surface: what users import must be there, and nothing more."""

from __future__ import annotations

import async_cassandra
import async_cassandra.streaming


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in vars(async_cassandra) if not name.startswith("_")}
    modules = {"cluster", "exceptions", "result", "session", "streaming", "testing"}
    assert set(async_cassandra.__all__) - {"__version__"} == public - modules
    for name in async_cassandra.__all__:
        assert getattr(async_cassandra, name) is not None


def test_streaming_exports() -> None:
    assert set(async_cassandra.streaming.__all__) >= {
        "AsyncStreamingResultSet",
        "StreamConfig",
        "create_streaming_statement",
    }
