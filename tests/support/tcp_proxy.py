"""A TCP proxy on loopback that delays traffic and counts it: a slow network between client and NAS.

    proxy = DelayProxy(target_port, delay=0.002)   # 2 ms added each way, adjustable later
    ... connect clients to 127.0.0.1:proxy.port ...
    proxy.delay = 0.05                             # the network gets slow (for data sent from now on)
    proxy.received                                 # bytes the server sent to clients so far
    proxy.busy                                     # connections with a request the server has not yet
                                                   # answered (reads in flight, for a NAS), now
    proxy.close()

Each direction of each connection is a reading thread and a sending thread joined by a
delay line: a chunk goes out `delay` seconds after it came in, in order, whatever the
delay was changed to meanwhile (so a chunk is never overtaken). Threads and
`time.sleep` keep sub-millisecond precision, where asyncio timers round up to whole
milliseconds. Benchmarks run it in a child process of its own, so its threads take
neither the measured process's GIL nor its share of the CPU:

    python -m tests.support.tcp_proxy TARGET_PORT [DELAY_SECONDS]
        prints the proxy's port, then answers each line on stdin:
        "delay S" sets the delay; "count" prints "<bytes to clients> <bytes to server>";
        end of input stops the proxy.
"""

from __future__ import annotations

import queue
import socket
import subprocess
import sys
import threading
import time

CHUNK = 1 << 16


class DelayProxy:
    """Forwards 127.0.0.1:<port> to `host:target`, adding `delay` seconds each way (0: none)."""

    def __init__(self, target: int, delay: float = 0.0, host: str = "127.0.0.1"):
        self.host, self.target, self.delay = host, target, delay
        self.received = 0  # bytes from the server to clients
        self.sent = 0  # bytes from clients to the server
        self._waiting: set[int] = set()  # connections whose client sent data not yet answered
        self.busy = 0  # len(_waiting): requests in flight, one per connection (SMB clients wait for each answer)
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._closed = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection((self.host, self.target), timeout=10)
                server.settimeout(None)
            except OSError:
                client.close()  # the server is down: so is the connection through the proxy
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, server]
            for src, dst, upstream in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pipe, args=(src, dst, upstream, client.fileno()), name="proxy-pipe",
                                 daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, upstream: bool, conn: int) -> None:
        line: queue.SimpleQueue = queue.SimpleQueue()
        answered = None if upstream else (lambda: self._mark(conn, False))
        threading.Thread(target=self._send, args=(line, src, dst, answered), name="proxy-send", daemon=True).start()
        while True:
            try:
                data = src.recv(CHUNK)
            except OSError:
                data = b""
            if not data:
                line.put((0.0, b""))
                return
            with self._lock:
                if upstream:
                    self.sent += len(data)
                    self._waiting.add(conn)
                    self.busy = len(self._waiting)
                else:
                    self.received += len(data)
            line.put((time.perf_counter() + self.delay, data))

    def _mark(self, conn: int, waiting: bool) -> None:
        with self._lock:
            (self._waiting.add if waiting else self._waiting.discard)(conn)
            self.busy = len(self._waiting)

    @staticmethod
    def _send(line: queue.SimpleQueue, src: socket.socket, dst: socket.socket, answered=None) -> None:
        while True:
            due, data = line.get()
            if not data:
                break
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            try:
                dst.sendall(data)
            except OSError:
                break
            if answered is not None:
                answered()
        if answered is not None:
            answered()
        for s in (dst, src):  # one side ended: end the other too (a NAS that drops the connection)
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._closed.set()
        self.sock.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def __enter__(self) -> DelayProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ProxyProcess:
    """A `DelayProxy` in a child process (see the module docstring), driven through its stdin."""

    def __init__(self, target: int, delay: float = 0.0):
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.support.tcp_proxy", str(target), str(delay)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=_repo())
        self.port = int(self.proc.stdout.readline())

    def _ask(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def set_delay(self, delay: float) -> None:
        self._ask(f"delay {delay}")

    def counts(self) -> tuple[int, int]:
        """(bytes sent to clients, bytes sent to the server) so far."""
        received, sent = self._ask("count").split()
        return int(received), int(sent)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _repo() -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parents[2])


def main(argv: list[str]) -> None:
    proxy = DelayProxy(int(argv[0]), float(argv[1]) if len(argv) > 1 else 0.0)
    print(proxy.port, flush=True)
    for line in sys.stdin:
        words = line.split()
        if words[:1] == ["delay"]:
            proxy.delay = float(words[1])
            print("ok", flush=True)
        elif words[:1] == ["count"]:
            print(proxy.received, proxy.sent, flush=True)
    proxy.close()


if __name__ == "__main__":
    main(sys.argv[1:])
