"""One client per kind of replica target, all with the same small async surface: put (atomic:
a reader never sees half an object), get, list, digest, delete. Keys are relative paths such as
`journal/0001-000000000001-000000000042-1a2b3c4d.jrn`.

Secrets come from `env` (the process environment merged with the `replica_credentials` file)
and are never logged: logs name a target by `ReplicaURL.name`, which holds no query or secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Protocol

from meshd.locks import fsync_path
from meshd.store.replica.objects import ObjectCorrupt
from meshd.store.replica.urls import ReplicaURL

CHUNK = 1 << 20


class TargetError(RuntimeError):
    """A replica could not be reached or refused an operation; the message names the replica."""


class Target(Protocol):
    name: str

    async def put_bytes(self, key: str, data: bytes) -> None: ...
    async def put_file(self, key: str, path: Path) -> None: ...
    async def get_bytes(self, key: str) -> bytes: ...
    async def get_file(self, key: str, path: Path) -> None: ...
    async def list(self, prefix: str) -> dict[str, int]: ...
    async def digest(self, key: str) -> tuple[int, str]: ...
    async def delete(self, key: str) -> None: ...
    async def close(self) -> None: ...


def read_credentials(path: Path | None, environ: Mapping[str, str] | None = None
                     ) -> dict[str, str]:
    """The environment, overlaid with KEY=VALUE lines of the credentials file (the format of
    systemd's EnvironmentFile=, so one file serves both)."""
    env = dict(os.environ if environ is None else environ)
    if path is None:
        return env
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        env[key.strip()] = value.strip().strip('"').strip("'")
    return env


def open_target(url: ReplicaURL, env: Mapping[str, str], key: bytes | None = None) -> Target:
    """The client for `url`; with `key`, everything shipped through it is encrypted."""
    if url.scheme == "file":
        target = FileTarget(url)
    elif url.scheme == "sftp":
        target = SftpTarget(url, env)
    else:
        target = S3Target(url, env)
    return EncryptedTarget(target, key) if key is not None else target


def _sha256_of_chunks(chunks) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


class FileTarget:
    """A directory: a second disk or a mounted share. Its root must exist: a share that is not
    mounted must fail loudly, not fill the local disk's empty mount point."""

    def __init__(self, url: ReplicaURL) -> None:
        self.name = url.name
        self.root = Path(url.path)

    def _path(self, key: str) -> Path:
        if not self.root.is_dir():
            raise TargetError(f"{self.name}: directory {self.root} does not exist")
        return self.root / key

    def _put(self, key: str, write) -> None:
        final = self._path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".tmp-{secrets.token_hex(6)}-{final.name}")
        try:
            with tmp.open("wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
            fsync_path(final.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise TargetError(f"{self.name}: {exc}") from exc

    async def put_bytes(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, key, lambda fh: fh.write(data))

    async def put_file(self, key: str, path: Path) -> None:
        def copy(fh):
            with path.open("rb") as src:
                for chunk in iter(lambda: src.read(CHUNK), b""):
                    fh.write(chunk)
        await asyncio.to_thread(self._put, key, copy)

    async def get_bytes(self, key: str) -> bytes:
        return await asyncio.to_thread(self._sync(lambda p: p.read_bytes()), key)

    async def get_file(self, key: str, path: Path) -> None:
        import shutil

        await asyncio.to_thread(self._sync(lambda p: shutil.copyfile(p, path)), key)

    async def digest(self, key: str) -> tuple[int, str]:
        def hash_file(p: Path) -> tuple[int, str]:
            with p.open("rb") as fh:
                return _sha256_of_chunks(iter(lambda: fh.read(CHUNK), b""))
        return await asyncio.to_thread(self._sync(hash_file), key)

    async def delete(self, key: str) -> None:
        def unlink(p: Path) -> None:
            p.unlink(missing_ok=True)
        await asyncio.to_thread(self._sync(unlink), key)

    async def list(self, prefix: str) -> dict[str, int]:
        def scan(p: Path) -> dict[str, int]:
            if not p.is_dir():
                return {}
            return {f"{prefix}/{e.name}": e.stat().st_size for e in p.iterdir()
                    if e.is_file() and not e.name.startswith(".tmp-")}
        return await asyncio.to_thread(self._sync(scan), prefix)

    def _sync(self, fn):
        def run(key: str):
            try:
                return fn(self._path(key))
            except OSError as exc:
                raise TargetError(f"{self.name}: {exc}") from exc
        return run

    async def close(self) -> None:
        return None


class SftpTarget:
    """SFTP through asyncssh: one connection kept open and made again after any error. Host
    keys are checked against `known_hosts=` (or ~/.ssh/known_hosts); the key or password comes
    from MESHD_SFTP_KEY / MESHD_SFTP_PASSWORD."""

    TIMEOUT = 15.0

    def __init__(self, url: ReplicaURL, env: Mapping[str, str]) -> None:
        self.name = url.name
        self.url = url
        self.root = url.path
        self._env = env
        self._conn = None
        self._sftp = None
        self._lock = asyncio.Lock()

    async def _client(self):
        import asyncssh

        if self._sftp is not None:
            return self._sftp
        options = {"username": self.url.user or self._env.get("USER"),
                   "port": self.url.port or 22, "connect_timeout": self.TIMEOUT}
        if "known_hosts" in self.url.params:
            options["known_hosts"] = self.url.params["known_hosts"]
        if self._env.get("MESHD_SFTP_KEY"):
            options["client_keys"] = [self._env["MESHD_SFTP_KEY"]]
        if self._env.get("MESHD_SFTP_PASSWORD"):
            options["password"] = self._env["MESHD_SFTP_PASSWORD"]
        self._conn = await asyncssh.connect(self.url.host, **options)
        self._sftp = await self._conn.start_sftp_client()
        return self._sftp

    async def _call(self, fn):
        import asyncssh

        async with self._lock:
            try:
                sftp = await self._client()
                return await asyncio.wait_for(fn(sftp), self.TIMEOUT * 8)
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                await self._drop()
                if isinstance(exc, asyncssh.SFTPNoSuchFile):
                    raise FileNotFoundError(str(exc)) from exc
                raise TargetError(f"{self.name}: {type(exc).__name__}: {exc}") from exc

    async def _drop(self) -> None:
        conn, self._conn, self._sftp = self._conn, None, None
        if conn is not None:
            conn.abort()

    def _remote(self, key: str) -> str:
        return f"{self.root}/{key}"

    async def _put(self, key: str, write) -> None:
        remote = self._remote(key)
        parent, name = remote.rsplit("/", 1)
        tmp = f"{parent}/.tmp-{secrets.token_hex(6)}-{name}"

        async def run(sftp):
            await sftp.makedirs(parent, exist_ok=True)
            async with sftp.open(tmp, "wb") as fh:
                await write(fh)
            await sftp.posix_rename(tmp, remote)
        await self._call(run)

    async def put_bytes(self, key: str, data: bytes) -> None:
        async def write(fh):
            await fh.write(data)
        await self._put(key, write)

    async def put_file(self, key: str, path: Path) -> None:
        async def write(fh):
            with path.open("rb") as src:
                for chunk in iter(lambda: src.read(CHUNK), b""):
                    await fh.write(chunk)
        await self._put(key, write)

    async def get_bytes(self, key: str) -> bytes:
        async def run(sftp):
            async with sftp.open(self._remote(key), "rb") as fh:
                return await fh.read()
        return await self._call(run)

    async def get_file(self, key: str, path: Path) -> None:
        async def run(sftp):
            async with sftp.open(self._remote(key), "rb") as fh:
                with path.open("wb") as out:
                    while chunk := await fh.read(CHUNK):
                        out.write(chunk)
        await self._call(run)

    async def digest(self, key: str) -> tuple[int, str]:
        async def run(sftp):
            digest, size = hashlib.sha256(), 0
            async with sftp.open(self._remote(key), "rb") as fh:
                while chunk := await fh.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
            return size, digest.hexdigest()
        return await self._call(run)

    async def delete(self, key: str) -> None:
        async def run(sftp):
            with contextlib.suppress(FileNotFoundError):
                await sftp.remove(self._remote(key))
        await self._call(run)

    async def list(self, prefix: str) -> dict[str, int]:
        import asyncssh

        async def run(sftp):
            try:
                entries = await sftp.readdir(self._remote(prefix))
            except asyncssh.SFTPNoSuchFile:
                return {}
            return {f"{prefix}/{e.filename}": e.attrs.size or 0 for e in entries
                    if e.filename not in (".", "..") and not e.filename.startswith(".tmp-")}
        return await self._call(run)

    async def close(self) -> None:
        async with self._lock:
            await self._drop()


class S3Target:
    """S3-compatible object storage through obstore (a put is atomic there). Credentials from
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN; region from `region=` or
    AWS_REGION; `endpoint=` for a store other than AWS."""

    def __init__(self, url: ReplicaURL, env: Mapping[str, str]) -> None:
        from obstore.store import S3Store

        self.name = url.name
        endpoint = url.params.get("endpoint") or env.get("AWS_ENDPOINT_URL")
        options = {"timeout": "60s", "connect_timeout": "5s"}
        if endpoint and endpoint.startswith("http://"):
            options["allow_http"] = True
        config = {k: v for k, v in {
            "access_key_id": env.get("AWS_ACCESS_KEY_ID"),
            "secret_access_key": env.get("AWS_SECRET_ACCESS_KEY"),
            "session_token": env.get("AWS_SESSION_TOKEN"),
            "region": url.params.get("region") or env.get("AWS_REGION")
            or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            "endpoint": endpoint}.items() if v}
        # The shipper retries with its own backoff and reports the failure; the client's
        # default (10 retries over 3 minutes) would hide an outage that long.
        retry = {"max_retries": 2, "retry_timeout": timedelta(seconds=10),
                 "backoff": {"init_backoff": timedelta(milliseconds=100),
                             "max_backoff": timedelta(seconds=2), "base": 2}}
        self._store = S3Store(url.host, prefix=url.path or None, client_options=options,
                              retry_config=retry, **config)

    async def _call(self, coro):
        try:
            return await coro
        except FileNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001 - obstore raises its own error classes
            raise TargetError(f"{self.name}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc

    async def put_bytes(self, key: str, data: bytes) -> None:
        import obstore

        await self._call(obstore.put_async(self._store, key, data))

    async def put_file(self, key: str, path: Path) -> None:
        import obstore

        await self._call(obstore.put_async(self._store, key, path))

    async def _stream(self, key: str):
        import obstore

        result = await self._call(obstore.get_async(self._store, key))
        return result.stream(min_chunk_size=CHUNK)

    async def get_bytes(self, key: str) -> bytes:
        import obstore

        result = await self._call(obstore.get_async(self._store, key))
        return bytes(await self._call(result.bytes_async()))

    async def get_file(self, key: str, path: Path) -> None:
        stream = await self._stream(key)
        with path.open("wb") as out:
            async for chunk in stream:
                out.write(chunk)

    async def digest(self, key: str) -> tuple[int, str]:
        stream = await self._stream(key)
        digest, size = hashlib.sha256(), 0
        async for chunk in stream:
            digest.update(chunk)
            size += len(chunk)
        return size, digest.hexdigest()

    async def delete(self, key: str) -> None:
        import obstore

        await self._call(obstore.delete_async(self._store, key))

    async def list(self, prefix: str) -> dict[str, int]:
        import obstore

        items = await self._call(obstore.list(self._store, prefix=prefix).collect_async())
        return {i["path"]: i["size"] for i in items}

    async def close(self) -> None:
        return None


class EncryptedTarget:
    """Another target with every object encrypted on the way out and checked and decrypted on
    the way back (see crypt.py). Digests and listed sizes are the plaintext's, so shipping
    and restore check the same numbers with or without encryption."""

    def __init__(self, inner: Target, key: bytes) -> None:
        self.inner = inner
        self.name = inner.name
        self._key = key

    async def put_bytes(self, key: str, data: bytes) -> None:
        from meshd.store.replica import crypt

        await self.inner.put_bytes(key, await asyncio.to_thread(crypt.encrypt_bytes,
                                                                self._key, data))

    async def put_file(self, key: str, path: Path) -> None:
        from meshd.store.replica import crypt

        sealed = path.with_name(f".tmp-enc-{secrets.token_hex(6)}-{path.name}")
        try:
            await asyncio.to_thread(crypt.encrypt_file, self._key, path, sealed)
            await self.inner.put_file(key, sealed)
        finally:
            sealed.unlink(missing_ok=True)

    async def get_bytes(self, key: str) -> bytes:
        from meshd.store.replica import crypt

        data = await self.inner.get_bytes(key)
        try:
            return await asyncio.to_thread(crypt.decrypt_bytes, self._key, data)
        except crypt.DecryptError as exc:
            raise ObjectCorrupt(f"{self.name}: {key}: {exc}") from exc

    async def get_file(self, key: str, path: Path) -> None:
        from meshd.store.replica import crypt

        sealed = path.with_name(f".tmp-enc-{secrets.token_hex(6)}-{path.name}")
        try:
            await self.inner.get_file(key, sealed)
            await asyncio.to_thread(crypt.decrypt_file, self._key, sealed, path)
        except crypt.DecryptError as exc:
            raise ObjectCorrupt(f"{self.name}: {key}: {exc}") from exc
        finally:
            sealed.unlink(missing_ok=True)

    async def digest(self, key: str) -> tuple[int, str]:
        import tempfile

        from meshd.store.replica import crypt

        with tempfile.TemporaryDirectory(prefix="meshd-digest-") as tmp:
            sealed = Path(tmp) / "object"
            await self.inner.get_file(key, sealed)

            def plain_digest() -> tuple[int, str]:
                with sealed.open("rb") as fh:
                    return _sha256_of_chunks(crypt.open_chunks(self._key, fh.read))
            try:
                return await asyncio.to_thread(plain_digest)
            except crypt.DecryptError as exc:
                raise TargetError(f"{self.name}: {key}: {exc}") from exc

    async def list(self, prefix: str) -> dict[str, int]:
        from meshd.store.replica import crypt

        return {k: crypt.plain_size(v) for k, v in (await self.inner.list(prefix)).items()}

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    async def close(self) -> None:
        await self.inner.close()
