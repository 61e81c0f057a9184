"""Whether bytes can be a paging state a Cassandra server gave.

A paging state is the server's own serialized cursor: (partition key, row mark,
remaining rows, remaining rows in the partition), as length-prefixed byte strings and
unsigned vints (protocol v4 and later; the v3 layout with short lengths and ints is
still accepted by the server). A server that cannot parse one answers with a protocol
error and closes the connection, failing every request on it for a while; bytes that
cannot be a paging state are refused here instead, before anything is sent.
"""

from __future__ import annotations

__all__ = ["is_well_formed"]


def is_well_formed(state: bytes) -> bool:
    """True if ``state`` has the layout of a paging state (the server may still refuse
    one whose contents do not fit the query)."""
    return _is_vint_layout(state) or _is_short_length_layout(state)


def _unsigned_vint(data: bytes, index: int) -> tuple[int, int] | None:
    """(value, index after it) of the unsigned vint at ``index``: the count of leading
    one bits of the first byte is the count of bytes that follow it."""
    if index >= len(data):
        return None
    first = data[index]
    extra = 0
    while extra < 8 and first & (0x80 >> extra):
        extra += 1
    end = index + 1 + extra
    if end > len(data):
        return None
    value = first & (0xFF >> extra) if extra < 8 else 0
    for byte in data[index + 1 : end]:
        value = (value << 8) | byte
    return value, end


def _is_vint_layout(data: bytes) -> bool:
    index = 0
    for length_prefixed in (True, True, False, False):
        read = _unsigned_vint(data, index)
        if read is None:
            return False
        value, index = read
        if length_prefixed:
            index += value
            if index >= len(data):  # the counts must follow
                return False
    return index == len(data)


def _is_short_length_layout(data: bytes) -> bool:
    index = 0
    for _ in range(2):  # partition key, row mark: a signed short length, then the bytes
        if len(data) - index < 2:
            return False
        length = int.from_bytes(data[index : index + 2], "big", signed=True)
        if length < 0:
            return False
        index += 2 + length
    ints = len(data) - index
    if ints not in (4, 8):  # remaining, and (since Cassandra 3.0) remaining in partition
        return False
    return all(
        int.from_bytes(data[i : i + 4], "big", signed=True) >= 0 for i in range(index, len(data), 4)
    )
