"""run_overlapped: reading and writing overlap the segmenting, results stay in order, errors surface."""

from __future__ import annotations

import threading
import time

import pytest

from lvseg.inference.pipeline import run_overlapped


def test_results_are_in_order_and_reads_run_ahead_of_segmenting() -> None:
    events: list[str] = []
    lock = threading.Lock()

    def read(chunk: int) -> int:
        with lock:
            events.append(f"read {chunk}")
        return chunk * 10

    def segment(chunk: int, loaded: int) -> int:
        time.sleep(0.05)  # long enough for the next read to start meanwhile
        with lock:
            events.append(f"segment {chunk}")
        return loaded + 1

    def write(chunk: int, loaded: int, result: int) -> tuple[int, int]:
        time.sleep(0.02 * (3 - chunk % 3))  # later chunks may finish writing first: order must still hold
        return chunk, result

    assert run_overlapped(list(range(6)), read, segment, write) == [(i, i * 10 + 1) for i in range(6)]
    # Chunk 1 was read before chunk 0 finished segmenting.
    assert events.index("read 1") < events.index("segment 0")


def test_the_first_error_of_any_stage_is_raised() -> None:
    def failing_write(chunk: int, loaded: int, result: int) -> int:
        if chunk == 2:
            raise OSError("disk full")
        return chunk

    with pytest.raises(OSError, match="disk full"):
        run_overlapped(list(range(5)), lambda c: c, lambda c, x: x, failing_write)
    with pytest.raises(ValueError, match="bad image 3"):
        run_overlapped(
            list(range(5)),
            lambda c: c if c != 3 else (_ for _ in ()).throw(ValueError("bad image 3")),
            lambda c, x: x,
            lambda c, x, r: r,
        )


def test_no_chunks_no_work() -> None:
    assert run_overlapped([], lambda c: c, lambda c, x: x, lambda c, x, r: r) == []
