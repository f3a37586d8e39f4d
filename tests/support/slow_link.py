"""A slow network link on loopback: a TCP proxy with a per-connection rate cap (no netem on this kernel).

Tests point an S3 client at `SlowLink(...).endpoint` instead of moto's
address to see what a slow S3 endpoint does to the code above it (training
going on during a checkpoint upload).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

CHUNK = 64 * 1024


class SlowLink:
    """Forward 127.0.0.1:<port> to `upstream` ("http://host:port"), each connection capped at `rate` bytes/s upstream-bound."""

    def __init__(self, upstream: str, rate: float) -> None:
        parts = urlsplit(upstream)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rate = rate
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, server, self.rate), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, None), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, rate: float | None) -> None:
        free_at = time.monotonic()  # when the link is free again: an idle connection saves up no credit
        try:
            while chunk := src.recv(CHUNK):
                dst.sendall(chunk)
                if rate:
                    free_at = max(free_at, time.monotonic()) + len(chunk) / rate
                    time.sleep(max(0.0, free_at - time.monotonic()))
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()


@contextlib.contextmanager
def slow_link(upstream: str, rate: float) -> Iterator[SlowLink]:
    """A SlowLink for the duration of a block."""
    link = SlowLink(upstream, rate)
    try:
        yield link
    finally:
        link.close()
