"""A function called every few seconds in a background thread for as long as a block runs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def repeating(seconds: float, fn: Callable[[], object], name: str) -> Iterator[None]:
    """Call ``fn`` every ``seconds`` (first after one period) until the block ends; the thread is
    joined before the block's exit continues, so nothing runs after it."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(seconds):
            fn()

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
