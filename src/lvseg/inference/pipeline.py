"""Batches through read -> segment -> write with the reading and writing overlapped with the segmenting.

Folder prediction spends, besides the network, time decoding images and encoding mask and overlay PNGs; done
one after the other, that time is lost to the network's throughput. :func:`run_overlapped` reads the next
batch and writes the previous one in worker threads while the current one is segmented (image decoding and
PNG encoding in Pillow, and torch's kernels, release the GIL). At most one batch is read ahead and
``writes_in_flight`` batches wait to be written, so memory stays bounded; results come back in batch order and
the first error of any stage is raised.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

Chunk = TypeVar("Chunk")
Loaded = TypeVar("Loaded")
Result = TypeVar("Result")
Written = TypeVar("Written")


def run_overlapped(
    chunks: Sequence[Chunk],
    read: Callable[[Chunk], Loaded],
    segment: Callable[[Chunk, Loaded], Result],
    write: Callable[[Chunk, Loaded, Result], Written],
    writes_in_flight: int = 2,
    on_batch: Callable[[int], None] | None = None,
) -> list[Written]:
    """``write(chunk, read(chunk), segment(chunk, read(chunk)))`` for every chunk, in order, with ``read`` of the
    next chunk and ``write`` of earlier ones running in threads while ``segment`` runs in the caller's thread.
    ``on_batch(done)``: called after each chunk is segmented, with the number of chunks segmented so far."""
    if not chunks:
        return []
    written: list[Written] = []
    with ThreadPoolExecutor(max_workers=1 + writes_in_flight, thread_name_prefix="lvseg-io") as pool:
        pending_writes: deque[Future[Written]] = deque()
        next_read = pool.submit(read, chunks[0])
        try:
            for index, chunk in enumerate(chunks):
                loaded = next_read.result()
                if index + 1 < len(chunks):
                    next_read = pool.submit(read, chunks[index + 1])
                result = segment(chunk, loaded)
                pending_writes.append(pool.submit(write, chunk, loaded, result))
                while len(pending_writes) > writes_in_flight:
                    written.append(pending_writes.popleft().result())
                if on_batch is not None:
                    on_batch(index + 1)
            while pending_writes:
                written.append(pending_writes.popleft().result())
        except BaseException:
            next_read.cancel()
            for future in pending_writes:
                future.cancel()
            raise
    return written
