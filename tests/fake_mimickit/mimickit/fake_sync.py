"""How the fake's ranks meet: over TCP on master_port, where the real ranks meet in torch's store.

Rank 0 listens on master_port (two runs on one port therefore collide, as seen in §6.2).
Every other rank connects at the first collective, says it is ready and waits; rank 0 waits
until all have come (forever if one died first: §6.3 class A), and at the end sends "done".
A rank sees its root die as the connection closing, the way gloo's rank 1 did (§6.1).
"""

from __future__ import annotations

import os
import socket
import time

POLL = 0.05


class Store:
    """Rank 0's end. Binding raises OSError (EADDRINUSE) when the port is taken."""

    def __init__(self, port: int) -> None:
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Like a server should: a previous run's TIME_WAIT connections must not block the port,
        # while a second listener on it still fails (Linux).
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._server.bind(("", port))
            self._server.listen()
        except OSError:
            self._server.close()
            raise
        self._peers: list[socket.socket] = []

    def wait_ready(self, count: int) -> None:
        while len(self._peers) < count:
            peer, _ = self._server.accept()
            if peer.recv(64).startswith(b"ready"):
                self._peers.append(peer)
            else:
                peer.close()

    def release(self) -> None:
        for peer in self._peers:
            peer.sendall(b"done\n")
            peer.close()
        self._server.close()


class StoreClient:
    """A child rank's end."""

    def __init__(self, port: int, rank: int) -> None:
        self._port = port
        self._rank = rank
        self._parent = os.getppid()
        self._conn: socket.socket | None = None

    def root_alive(self) -> bool:
        return os.getppid() == self._parent

    def join(self) -> bool:
        """Connect (retrying, like torch's store clients) and report ready; False if the root died first."""
        while self.root_alive():
            try:
                conn = socket.create_connection(("127.0.0.1", self._port), timeout=1.0)
            except OSError:
                time.sleep(POLL)
                continue
            conn.settimeout(None)
            conn.sendall(f"ready {self._rank}\n".encode())
            self._conn = conn
            return True
        return False

    def wait_done(self) -> bool:
        """True when the root said done; False when its end closed (the root is gone)."""
        assert self._conn is not None
        return self._conn.recv(64).startswith(b"done")
