"""The public surface: what users import must be there, and nothing more."""

from __future__ import annotations

import async_cassandra
import async_cassandra.streaming


def test_all_lists_exactly_the_public_names() -> None:
    import types

    public = {
        name
        for name, value in vars(async_cassandra).items()
        # Submodules appear as attributes once imported; they are not re-exports.
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(async_cassandra.__all__) - {"__version__"} == public
    for name in async_cassandra.__all__:
        assert getattr(async_cassandra, name) is not None


def test_streaming_exports() -> None:
    assert set(async_cassandra.streaming.__all__) >= {
        "AsyncStreamingResultSet",
        "StreamConfig",
        "create_streaming_statement",
    }


def test_every_async_test_runs_once_on_each_backend() -> None:
    """Collect the whole suite: each async test id must appear once per backend."""
    import re
    import subprocess
    import sys
    from collections import Counter
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    ids = [line for line in collected if "::" in line]
    per_backend: dict[str, Counter[str]] = {}
    for test_id in ids:
        match = re.fullmatch(r"(.*)\[(.*)\]", test_id)
        if match is None:
            continue
        base, params = match.groups()
        parts = params.split("-")
        backend = next((p for p in parts if p in ("asyncio", "trio")), None)
        if backend is None:
            continue
        rest = "-".join(p for p in parts if p != backend)
        per_backend.setdefault(f"{base}[{rest}]", Counter())[backend] += 1
    assert len(per_backend) > 50
    uneven = {name: dict(c) for name, c in per_backend.items() if c != {"asyncio": 1, "trio": 1}}
    assert uneven == {}
