"""What the supervisor and its worker process agree on, shared by both without either importing
the other: the reserved exit code and the listening socket the worker inherits."""

from __future__ import annotations

import socket

# Reserved exit code: "the database is corrupt", for a supervisor that could not be told.
EXIT_DB_CORRUPT = 86


def bind_socket(host: str, port: int) -> socket.socket:
    """The API's listening socket: bound once by the supervisor, inherited by each worker."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock
