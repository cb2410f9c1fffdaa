"""What the supervisor and its worker process agree on, shared by both without either importing
the other: the reserved exit code, the listening socket the worker inherits and the two
messages on a standby worker's channel."""

from __future__ import annotations

import socket

import orjson

# Reserved exit code: "the database is corrupt", for a supervisor that could not be told.
EXIT_DB_CORRUPT = 86

# A standby worker's channel (one end of a socketpair, fd in MESHD_STANDBY_FD): the standby
# writes STANDBY_READY once imported; the supervisor promotes it with one promotion line.
STANDBY_READY = b"ready\n"


def promotion_message(read_only_reason: str | None) -> bytes:
    """The line that promotes a standby, carrying the mode it serves in (None: read-write)."""
    return orjson.dumps({"read_only_reason": read_only_reason}) + b"\n"


def read_promotion(line: bytes) -> str | None:
    """The read-only reason of a promotion line (None: read-write)."""
    return orjson.loads(line).get("read_only_reason") or None


def bind_socket(host: str, port: int) -> socket.socket:
    """The API's listening socket: bound once by the supervisor, inherited by each worker."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock
