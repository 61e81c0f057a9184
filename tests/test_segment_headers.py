"""Protocol v5 segments whose header arrives split over two reads, with both of the
library's connection classes (see ``_driver.KeepsPartialSegmentHeaders``).

The driver's segment decoder dropped the bytes of a header cut by the end of a read,
so the next read started inside a header and the connection failed with "CRC mismatch
on header". Where a read ends is TCP's choice, so every split point is tried, on the
decoder as the driver's reactors call it and, for ``EventLoopConnection``, through its
reader on a socket pair on each backend.
"""

from __future__ import annotations

import io
import struct
from typing import Any

import pytest
from _helpers import socket_pair_connection, unconnected, wait_until
from cassandra.connection import segment_codec_no_compression
from cassandra.protocol import ProtocolHandler, ReadyMessage

from async_cassandra._driver import DirectWriteConnection, KeepsPartialSegmentHeaders
from async_cassandra.connection import EventLoopConnection

READY = 0x02  # the opcode of a READY response: a frame with an empty body


def ready_frame(stream: int) -> bytes:
    """A protocol v5 response frame: READY on ``stream``."""
    return struct.pack(">BBhBi", 0x80 | 5, 0, stream, READY, 0)


def segments(streams: list[int]) -> bytes:
    """One self-contained segment per frame, as a server sends them one at a time."""
    out = io.BytesIO()
    for stream in streams:
        segment_codec_no_compression.encode(out, ready_frame(stream))
    return out.getvalue()


def awaiting(connection: Any, streams: list[int]) -> list[Any]:
    """Register a request on each stream id of ``connection`` (v5, checksumming on, as
    after its handshake); the returned list gets, in order, each answered stream id,
    or what a request got instead of its READY (an error, when the connection fails)."""
    connection.protocol_version = 5
    connection._enable_checksumming()
    answered: list[Any] = []
    for stream in streams:

        def callback(response: Any, stream: int = stream) -> None:
            answered.append(stream if isinstance(response, ReadyMessage) else response)

        connection._requests[stream] = (callback, ProtocolHandler.decode_message, None)
    return answered


STREAMS = [1, 2, 3]


@pytest.mark.parametrize(
    "connection_class",
    [DirectWriteConnection, EventLoopConnection],
    ids=["DirectWriteConnection", "EventLoopConnection"],
)
def test_every_split_of_the_bytes_is_decoded(connection_class: type) -> None:
    # Both classes read as the driver's reactors do: what arrived goes to the buffer,
    # then process_io_buffer. Cut at every byte: inside a header, its CRC, a frame.
    assert issubclass(connection_class, KeepsPartialSegmentHeaders)
    data = segments(STREAMS)
    for cut in range(1, len(data)):
        connection = unconnected(connection_class)
        answered = awaiting(connection, STREAMS)
        for chunk in (data[:cut], data[cut:]):
            connection._iobuf.write(chunk)
            connection.process_io_buffer()  # raised CrcMismatchException for some cuts
        assert answered == STREAMS, f"cut at byte {cut} (segments of {len(data) // 3})"
        assert connection._io_buffer.readable_io_bytes() == 0


@pytest.mark.anyio
async def test_a_header_split_between_two_reads_on_the_loop() -> None:
    # The real read path of EventLoopConnection: the reader decodes what the first
    # part holds (the first answer, and the start of the second segment's header),
    # and the rest arrives in a later read.
    data = segments(STREAMS)
    first_segment = len(data) // len(STREAMS)
    header = segment_codec_no_compression.header_length_with_crc
    for cut in range(first_segment + 1, first_segment + header):
        await read_in_two_parts(data, cut)


async def read_in_two_parts(data: bytes, cut: int) -> None:
    connection, peer, reactor = socket_pair_connection()
    try:
        answered = awaiting(connection, STREAMS)
        connection._io.start()
        peer.sendall(data[:cut])
        # Answered in the reader's pass over the first part, which has ended by now.
        await wait_until(lambda: answered == STREAMS[:1], f"the first answer (cut {cut})")
        peer.sendall(data[cut:])
        await wait_until(lambda: len(answered) == len(STREAMS), f"3 outcomes (cut {cut})")
        assert answered == STREAMS, f"cut at byte {cut}"
        assert not connection.is_defunct
    finally:
        connection.close()
        peer.close()
        reactor.close()
