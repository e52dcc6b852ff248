"""Worker processes for the CPU-bound steps (inspecting PDFs, parsing outputs): one per core, spawned.

Spawned, not forked: a task runner's process holds threads and sockets a fork
would copy half-way. A spawned process normally runs the parent's ``__main__``
again first; inside Airflow that is its command-line entry point, whose
imports cost a worker seconds before it does any work. The functions these
workers run live in importable modules, so the processes are started with
``__main__`` left out: each imports just the module of the work it is sent.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import sys
from collections.abc import Iterator
from typing import Any


def cores() -> int:
    """The cores this process may run on (a container's or a task's CPU affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0))


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[concurrent.futures.ProcessPoolExecutor]:
    """A pool of ``workers`` spawned processes, all started now, none of them importing the parent's ``__main__``."""
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        with _main_left_out():
            for _ in range(workers):  # a pool spawns a process per submit (no process is idle yet), there and then
                pool.submit(int)
        yield pool
    finally:
        pool.shutdown(cancel_futures=True)


@contextlib.contextmanager
def _main_left_out() -> Iterator[None]:
    """While processes are spawned, ``__main__`` names no file or module, so they do not run it again."""
    main = sys.modules["__main__"]
    hidden: dict[str, Any] = {
        name: main.__dict__.pop(name) for name in ("__file__", "__spec__") if name in main.__dict__
    }
    try:
        if "__spec__" in hidden:
            main.__spec__ = None
        yield
    finally:
        main.__dict__.update(hidden)
