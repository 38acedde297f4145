"""The proxy's streamed downloads (mlstack/artifacts.py `_read_ahead`): every chunk in order, a
read error raised where it happened, and a client that goes away stops the S3 read."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from mlstack import artifacts

pytestmark = pytest.mark.unit


class Body:
    """An S3 object's body as botocore hands it out: chunks, then close()."""

    def __init__(self, chunks: int, fail_at: int | None = None) -> None:
        self.chunks, self.fail_at = chunks, fail_at
        self.read = 0
        self.closed = threading.Event()

    def iter_chunks(self, size: int) -> Iterator[bytes]:
        for index in range(self.chunks):
            if index == self.fail_at:
                raise ConnectionResetError("S3 went away")
            self.read += 1
            yield index.to_bytes(4, "big") * (size // 4)

    def close(self) -> None:
        self.closed.set()


def test_every_chunk_arrives_in_order_and_the_body_is_closed() -> None:
    body = Body(chunks=50)
    got = list(artifacts._read_ahead(body))
    assert [int.from_bytes(chunk[:4], "big") for chunk in got] == list(range(50))
    assert body.closed.wait(5)


def test_a_read_error_reaches_the_consumer_after_the_chunks_before_it() -> None:
    body = Body(chunks=50, fail_at=20)
    stream = artifacts._read_ahead(body)
    got = []
    with pytest.raises(ConnectionResetError, match="S3 went away"):
        for chunk in stream:
            got.append(chunk)
    assert len(got) == 20
    assert body.closed.wait(5)


def test_a_consumer_that_stops_early_stops_the_read() -> None:
    body = Body(chunks=10_000)
    stream = artifacts._read_ahead(body)
    next(stream)
    stream.close()  # what the server does when the client disconnects
    assert body.closed.wait(5)
    assert body.read <= 2 + artifacts.READ_AHEAD + 1, body.read
