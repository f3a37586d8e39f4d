"""A TCP proxy on 127.0.0.1 that makes loopback behave like a WAN link to S3: a round-trip delay and a per-connection rate cap.

This machine's kernel has no netem, so the link is simulated in user space.
Every byte read on one side is written to the other no earlier than

    departure + size / rate + rtt / 2

where `departure` is when the previous chunk of that connection and
direction finished "serialising" (a token bucket with no burst: a
connection never sends faster than `rate`), and the first byte a client
sends leaves one RTT after it connected (the TCP handshake). Order is
kept per direction, so a request followed by its response pays the full
round trip, and `Expect: 100-continue` (which botocore sends before large
bodies) pays one more, as it does on a real link.

Work is per chunk (what one recv returns, up to 256 KiB), never per byte:
the asyncio Protocol callbacks queue a chunk with its delivery time and a
timer writes every chunk that is due. When a direction holds more than
`window` bytes (a TCP window's worth), reading from its source pauses, so
the sender is held back as a full window would hold it.

Not modelled: TLS handshakes, slow start, loss, an aggregate cap shared by
all connections (here the CPUs are that cap).

    python benchmarks/latency_proxy.py --upstream 127.0.0.1:5000 [--rtt-ms 20] [--rate-mbps 25]

prints the port it listens on (one line) and serves until terminated.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
import subprocess
import sys
from pathlib import Path

_EOF = None  # in a queue: the source has half-closed
_WINDOW = 4 * 2**20
# Chunks due within this much of a timer firing go out with it: fewer wake-ups, sub-ms error.
_SLACK = 0.0005


class _Direction:
    """Bytes from one side of a proxied connection to the other, each chunk delivered when the link says it arrives."""

    def __init__(self, loop: asyncio.AbstractEventLoop, link: Link, src: _Side, dst: _Side, first_departure: float):
        self.loop, self.link, self.src, self.dst = loop, link, src, dst
        self.free_at = first_departure  # when the link in this direction can start the next chunk
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.queued = 0
        self.timer: asyncio.TimerHandle | None = None
        self.eof_sent = self.eof_done = self.dead = False
        self.src_paused = False
        self.dst_blocked = False  # dst's transport buffer is full (pause_writing)

    def push(self, data: bytes | None) -> None:
        if self.eof_sent or self.dead:
            return
        size = 0 if data is _EOF else len(data)
        depart = max(self.loop.time(), self.free_at)
        self.free_at = depart + size / self.link.rate if self.link.rate else depart
        due = self.free_at + self.link.delay
        self.queue.append((due, data))
        self.queued += size
        if data is _EOF:
            self.eof_sent = True
        self._throttle()
        if self.timer is None:
            self.timer = self.loop.call_at(due, self.flush)

    def flush(self) -> None:
        self.timer = None
        if self.dead:
            return
        if self.dst.transport is None:  # upstream still connecting: try again shortly
            self.timer = self.loop.call_later(0.001, self.flush)
            return
        horizon = self.loop.time() + _SLACK
        out, eof = [], False
        while self.queue and self.queue[0][0] <= horizon:
            _, data = self.queue.popleft()
            if data is _EOF:
                eof = True
                break
            out.append(data)
            self.queued -= len(data)
        if out:
            self.dst.transport.writelines(out)
        if eof:
            self.queue.clear()
            self.eof_done = True
            self.dst.finish_writing()
            return
        self._throttle()
        if self.queue:
            self.timer = self.loop.call_at(self.queue[0][0], self.flush)

    def _throttle(self) -> None:
        """Pause reading the source while this direction is a window behind, resume when it has caught up."""
        if self.src.transport is None:
            return
        hold = self.queued > _WINDOW or self.dst_blocked
        if hold and not self.src_paused:
            self.src.transport.pause_reading()
            self.src_paused = True
        elif self.src_paused and not self.dst_blocked and self.queued <= _WINDOW // 2 and not self.src.lost:
            self.src.transport.resume_reading()
            self.src_paused = False

    def kill(self) -> None:
        self.dead = True
        self.queue.clear()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _Side(asyncio.Protocol):
    """One socket of a proxied connection: the client's or the upstream's."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.out: _Direction | None = None  # bytes read here
        self.into: _Direction | None = None  # bytes written here
        self.lost = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.into is not None and self.into.queue and self.into.timer is None:
            self.into.flush()

    def data_received(self, data: bytes) -> None:
        self.out.push(data)

    def eof_received(self) -> bool:
        self.out.push(_EOF)
        return True  # stay half-open: the other direction may still be delivering

    def pause_writing(self) -> None:
        self.into.dst_blocked = True
        self.into._throttle()

    def resume_writing(self) -> None:
        self.into.dst_blocked = False
        self.into._throttle()

    def finish_writing(self) -> None:
        """The other side's EOF has arrived here: half-close, or close if nothing flows the other way any more."""
        if self.transport is None or self.lost:
            return
        if self.out.eof_done or self.peer.lost:
            self.transport.close()
            self.peer.close()
        elif self.transport.can_write_eof():
            self.transport.write_eof()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc) -> None:
        self.lost = True
        self.into.kill()  # nobody left to deliver to
        if exc is not None:
            self.out.kill()
            self.peer.close()
        else:
            self.out.push(_EOF)  # what is in flight still arrives, then the peer is closed


class Link:
    """The simulated link: `rtt` seconds per round trip, at most `rate` bytes/s per connection and direction (0: none)."""

    def __init__(self, rtt: float, rate: float) -> None:
        self.delay, self.rate = rtt / 2, rate
        self.rtt = rtt


async def serve(upstream: tuple[str, int], link: Link, port: int = 0, ready=None) -> None:
    """Accept on 127.0.0.1:port and forward every connection to upstream through the link, until cancelled."""
    loop = asyncio.get_running_loop()

    def accept() -> _Side:
        client, server = _Side(), _Side()
        client.peer, server.peer = server, client
        now = loop.time()
        # The client's first byte leaves after the handshake (one RTT); replies only follow requests anyway.
        client.out = server.into = _Direction(loop, link, client, server, now + link.rtt)
        server.out = client.into = _Direction(loop, link, server, client, now)

        async def connect() -> None:
            try:
                await loop.create_connection(lambda: server, *upstream)
            except OSError:
                client.close()

        loop.create_task(connect())
        return client

    srv = await loop.create_server(accept, "127.0.0.1", port)
    if ready is not None:
        ready(srv.sockets[0].getsockname()[1])
    async with srv:
        await srv.serve_forever()


class ProxyProcess:
    """The proxy in its own process (no GIL shared with the client under test), in front of upstream."""

    def __init__(self, upstream_url: str, rtt_ms: float, rate_mbps: float) -> None:
        hostport = upstream_url.split("://", 1)[-1].rstrip("/")
        self.rtt_ms, self.rate_mbps = rtt_ms, rate_mbps
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--upstream", hostport,
             "--rtt-ms", str(rtt_ms), "--rate-mbps", str(rate_mbps)],
            stdout=subprocess.PIPE, text=True)
        line = self._proc.stdout.readline()
        if not line.strip().isdigit():
            self._proc.kill()
            raise RuntimeError(f"latency proxy did not start (said {line!r})")
        self.url = f"http://127.0.0.1:{int(line)}"
        self.nice = os.getpriority(os.PRIO_PROCESS, self._proc.pid)

    def cpu(self) -> float:
        """CPU seconds the proxy has used so far."""
        fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--upstream", required=True, help="host:port to forward to")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free one, printed)")
    parser.add_argument("--rtt-ms", type=float, default=20.0, help="round-trip time added, in milliseconds")
    parser.add_argument("--rate-mbps", type=float, default=25.0,
                        help="per-connection, per-direction cap in MB/s (10^6 bytes/s; 25 MB/s = 200 Mbit/s); 0: none")
    args = parser.parse_args()
    host, _, port = args.upstream.rpartition(":")
    link = Link(args.rtt_ms / 1000, args.rate_mbps * 1e6)

    def ready(bound: int) -> None:
        print(bound, flush=True)

    async def run() -> None:
        task = asyncio.current_task()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await serve((host, int(port)), link, args.port, ready)

    try:
        # The link is not one of the machine's CPUs' jobs: where allowed, run ahead of other work on them
        # (the proxy needs ~2 ms of CPU per MB), so that a busy machine does not stretch the simulated RTT.
        os.setpriority(os.PRIO_PROCESS, 0, -10)
    except OSError:
        pass
    try:
        asyncio.run(run())
    except asyncio.CancelledError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
