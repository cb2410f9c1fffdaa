"""Optional client-side encryption of everything shipped (`replica_key_file`): the replica's
operator sees object names (epochs, sequences, backup times) and sizes, never contents.

AES-256-GCM in chunks of 1 MiB, so a backup is encrypted and decrypted streaming, never whole
in memory. Layout: MAGIC, an 8-byte random prefix, then per chunk a 4-byte length and the
sealed chunk. Chunk i's nonce is prefix + i; its associated data says whether it is the last,
so a truncated or reordered object fails to open instead of yielding a shorter plaintext.
Checks (size, SHA-256, CRC) are of the plaintext, as without encryption.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

MAGIC = b"MESHDENC1"
CHUNK = 1 << 20
_LEN = struct.Struct(">I")
_TAG = 16
HEADER = len(MAGIC) + 8


class DecryptError(ValueError):
    pass


def load_key(path: Path) -> bytes:
    """32 bytes, written as 64 hex characters (`openssl rand -hex 32`)."""
    text = Path(path).read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{path}: not hex (make one with `openssl rand -hex 32`)") from None
    if len(key) != 32:
        raise ValueError(f"{path}: the key must be 32 bytes (64 hex characters)")
    return key


def _aead(key: bytes):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def seal_chunks(key: bytes, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Encrypted output of a stream of plaintext chunks (each at most CHUNK bytes)."""
    aead, prefix = _aead(key), os.urandom(8)
    yield MAGIC + prefix
    index, pending = 0, next(chunks, b"")
    while True:
        following = next(chunks, None)
        last = following is None
        sealed = aead.encrypt(prefix + _LEN.pack(index), pending, b"\x01" if last else b"\x00")
        yield _LEN.pack(len(sealed)) + sealed
        if last:
            return
        index, pending = index + 1, following


def open_chunks(key: bytes, read) -> Iterator[bytes]:
    """Plaintext chunks from `read(n)` over an encrypted object; DecryptError when it was
    altered, truncated or sealed with another key."""
    from cryptography.exceptions import InvalidTag

    aead = _aead(key)
    head = read(HEADER)
    if len(head) != HEADER or not head.startswith(MAGIC):
        raise DecryptError("not an encrypted meshd object")
    prefix, index = head[len(MAGIC):], 0
    while True:
        size_bytes = read(_LEN.size)
        if len(size_bytes) != _LEN.size:
            raise DecryptError("encrypted object is truncated")
        (size,) = _LEN.unpack(size_bytes)
        sealed = read(size)
        if len(sealed) != size or size > CHUNK + _TAG:
            raise DecryptError("encrypted object is truncated")
        rest = read(1)
        last = rest == b""
        try:
            yield aead.decrypt(prefix + _LEN.pack(index), sealed, b"\x01" if last else b"\x00")
        except InvalidTag:
            raise DecryptError("encrypted object does not open with this key (altered, "
                               "truncated, or another key)") from None
        if last:
            return
        index, read = index + 1, _prepend(rest, read)


def _prepend(first: bytes, read):
    state = {"first": first}

    def reader(n: int) -> bytes:
        head, state["first"] = state["first"], b""
        return head + read(n - len(head)) if n > len(head) else head
    return reader


def _split(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), CHUNK):
        yield data[i:i + CHUNK]


def encrypt_bytes(key: bytes, data: bytes) -> bytes:
    return b"".join(seal_chunks(key, _split(data)))


def decrypt_bytes(key: bytes, data: bytes) -> bytes:
    view = memoryview(data)
    pos = [0]

    def read(n: int) -> bytes:
        out = bytes(view[pos[0]:pos[0] + n])
        pos[0] += len(out)
        return out
    return b"".join(open_chunks(key, read))


def encrypt_file(key: bytes, src: Path, dst: Path) -> None:
    with src.open("rb") as fin, dst.open("wb") as fout:
        for part in seal_chunks(key, iter(lambda: fin.read(CHUNK), b"")):
            fout.write(part)


def decrypt_file(key: bytes, src: Path, dst: Path) -> None:
    with src.open("rb") as fin, dst.open("wb") as fout:
        for chunk in open_chunks(key, fin.read):
            fout.write(chunk)


def plain_size(size: int) -> int:
    """The plaintext size of an encrypted object of `size` bytes (for listings)."""
    body = size - HEADER
    chunks = max(1, -(-body // (CHUNK + _TAG + _LEN.size)))
    return body - chunks * (_TAG + _LEN.size)
