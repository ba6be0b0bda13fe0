"""Work in worker threads, results in order: the kdump writer reads blocks in this thread,
compresses them in the pool (zstandard, zlib, cramjam and lzallright release the GIL) and
writes them here in pfn order. At most `limit` tasks wait: memory stays a few MiB."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor


class Ordered:
    """submit(fn, *args, tag) in order; ready() / drain() give (tag, result) in that order.
    jobs == 1 runs each task at once in this thread."""

    def __init__(self, jobs: int, limit: int, name: str = "sadump"):
        self.pool = ThreadPoolExecutor(jobs, name) if jobs > 1 else None
        self.limit = limit
        self.queue: deque = deque()

    def submit(self, tag, fn: Callable, *args) -> None:
        item = self.pool.submit(fn, *args) if self.pool is not None else fn(*args)
        self.queue.append((tag, item))

    def put(self, tag, result) -> None:
        """A result known without work, in its place in the order."""
        self.queue.append((tag, result))

    def ready(self):
        """(tag, result) of the tasks done at the head of the queue, or over the limit."""
        while self.queue and (len(self.queue) > self.limit or _done(self.queue[0][1])):
            tag, item = self.queue.popleft()
            yield tag, item.result() if isinstance(item, Future) else item

    def drain(self):
        while self.queue:
            tag, item = self.queue.popleft()
            yield tag, item.result() if isinstance(item, Future) else item

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _done(item) -> bool:
    return not isinstance(item, Future) or item.done()
