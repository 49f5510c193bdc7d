"""A loopback TCP proxy that can cut a connection mid-stream, to test resume with real clients."""

import contextlib
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class CutProxy:
    """Forward 127.0.0.1:<port> to `upstream`; cut connection number `cut_connection` after `cut_after` bytes."""

    upstream_port: int
    cut_after: int = 0
    cut_connection: int = -1
    port: int = 0
    connections: int = 0
    cuts: int = 0
    marker: bytes = b""
    marker_after: int = 0
    _listener: socket.socket = field(init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def start(self) -> "CutProxy":
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def arm(self, *, cut_after: int, connection: int) -> None:
        """Cut the connection with this (0-based) number after `cut_after` bytes of its response."""
        with self._lock:
            self.cut_after, self.cut_connection = cut_after, connection

    def cut_on(self, marker: bytes, *, after: int) -> None:
        """Cut the next connection whose request contains `marker`, `after` bytes into its response."""
        with self._lock:
            self.marker, self.marker_after = marker, after

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                number = self.connections
                self.connections += 1
                limit = self.cut_after if number == self.cut_connection else -1
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            state = {"limit": limit, "sent": 0}
            threading.Thread(target=self._requests, args=(downstream, upstream, state), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, state), daemon=True).start()

    def _requests(self, source: socket.socket, target: socket.socket, state: dict[str, int]) -> None:
        try:
            while True:
                chunk = source.recv(65536)
                if not chunk:
                    break
                with self._lock:
                    if self.marker and self.marker in chunk:
                        state["limit"] = state["sent"] + self.marker_after
                        self.marker = b""
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            self._shut(source, target)

    def _pump(self, source: socket.socket, target: socket.socket, state: dict[str, int]) -> None:
        try:
            while True:
                chunk = source.recv(65536)
                if not chunk:
                    break
                limit, sent = state["limit"], state["sent"]
                if limit >= 0 and sent + len(chunk) >= limit:
                    target.sendall(chunk[: limit - sent])
                    with self._lock:
                        self.cuts += 1
                    break
                target.sendall(chunk)
                state["sent"] = sent + len(chunk)
        except OSError:
            pass
        finally:
            self._shut(source, target)

    @staticmethod
    def _shut(*socks: socket.socket) -> None:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
