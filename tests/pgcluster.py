"""A throwaway PostgreSQL cluster for tests: `initdb` into a temp dir, `pg_ctl start` on a
loopback port, stopped and removed afterwards.

PostgreSQL refuses to run as root, so when the tests run as root the cluster belongs to the
`postgres` user (Debian's package creates it) and every server command runs through
`runuser -u postgres`. Trust authentication on loopback only: the cluster lives for one test
session and listens on 127.0.0.1 alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def pg_bin_dir() -> Path | None:
    """The newest `/usr/lib/postgresql/<version>/bin` holding `initdb`, or None."""
    root = Path("/usr/lib/postgresql")
    if not root.is_dir():
        return None
    versions = sorted((p for p in root.iterdir() if (p / "bin" / "initdb").exists()),
                      key=lambda p: int(p.name) if p.name.isdigit() else 0)
    return versions[-1] / "bin" if versions else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PgCluster:
    bin_dir: Path
    root: Path
    port: int
    as_user: str | None  # "postgres" when the tests run as root

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        user = self.as_user or os.environ.get("USER", "postgres")
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = [str(self.bin_dir / tool), *args]
        if self.as_user:
            argv = ["runuser", "-u", self.as_user, "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> None:
        self.run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.root / "server.log"),
                 "-w", "-t", "60", "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1",
                 "start")

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop", check=False)

    def create_database(self, name: str) -> str:
        self.run("createdb", "-h", "127.0.0.1", "-p", str(self.port), name)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with _admin(self) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def clone_template(self, name: str) -> str:
        """A new database copied from the migrated template: much faster than migrating."""
        with _admin(self) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"')
        return self.url(name)


TEMPLATE = "meshd_template"


def _admin(cluster: PgCluster):
    import psycopg

    return psycopg.connect(cluster.url("postgres"), autocommit=True)


def migrate(url: str) -> None:
    """Bring a database to meshd's current PostgreSQL schema."""
    import psycopg

    from meshd.store import pg_schema

    with psycopg.connect(url, autocommit=True) as conn:
        pg_schema.migrate(conn)


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[PgCluster]:
    """Start a fresh cluster; stop and delete it on exit."""
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql "
                           "(make test installs Debian's postgresql)")
    as_user = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="meshd-pg-", dir="/tmp"))
    if as_user:
        shutil.chown(root, user=as_user)
    cluster = PgCluster(bin_dir, root, _free_port(), as_user)
    try:
        cluster.run("initdb", "-D", str(cluster.data_dir), "-A", "trust", "-E", "UTF8",
                    "--no-sync", "-U", as_user or os.environ.get("USER", "postgres"))
        cluster.start()
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
