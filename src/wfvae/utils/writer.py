"""A background thread that writes outputs while the main thread keeps the accelerator busy.

How to use::

    with BackgroundWriter(max_pending=2) as writer:
        for item in loader:
            result = model(item)                    # GPU work
            writer.submit(save, result, path)       # encoding + disk I/O off the main thread

Jobs run in submission order on one thread (so an index written after its shard stays after
it). ``submit`` blocks while ``max_pending`` jobs wait, which bounds the memory held by queued
results. The first exception of a job is re-raised in the main thread by the next ``submit``
or by leaving the ``with`` block; later jobs are then dropped.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable


class BackgroundWriter:
    def __init__(self, max_pending: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, max_pending))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="wfvae-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                if self._error is None:
                    fn, args, kwargs = job
                    fn(*args, **kwargs)
            except BaseException as e:  # noqa: BLE001 - handed to the main thread as is
                self._error = e
            finally:
                self._queue.task_done()

    def _raise_pending_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Queue ``fn(*args, **kwargs)``; raises the error of an earlier job, if any."""
        self._raise_pending_error()
        self._queue.put((fn, args, kwargs))

    def wait(self) -> None:
        """Block until every queued job has run; raise the first job error."""
        self._queue.join()
        self._raise_pending_error()

    def close(self) -> None:
        """Finish the queued jobs and stop the thread; raise the first job error."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise_pending_error()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._thread.is_alive():  # the main thread failed: finish what is queued, keep its error
            self._queue.put(None)
            self._thread.join()
