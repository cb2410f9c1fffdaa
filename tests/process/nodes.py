"""Several meshd nodes on one throwaway PostgreSQL cluster, for the multi-node process tests.

Each node is a whole `meshd run` (supervisor, worker, standby) with its own data dir, port and
log, all given the same `--database` URL: what an operator runs behind a load balancer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator

import pytest

from tests import pgcluster
from tests.process.harness import MeshdProcess


@pytest.fixture
def pg_cluster() -> Iterator[pgcluster.PgCluster]:
    """A fresh cluster with an empty `mesh` database; skipped where PostgreSQL is missing."""
    if pgcluster.pg_bin_dir() is None:
        pytest.skip("PostgreSQL server binaries not installed (make test installs them)")
    with pgcluster.throwaway_cluster() as made:
        made.create_database("mesh")
        yield made


def start_node(make: Callable[..., MeshdProcess], url: str,
               extra_args: Iterable[str] = ()) -> MeshdProcess:
    """One node (not waited for): `make` is the `meshd_proc` fixture's factory."""
    return make().start(["--database", url, *extra_args])


async def start_nodes(make: Callable[..., MeshdProcess], url: str, count: int,
                      extra_args: Iterable[str] = (), timeout: float = 60) -> list[MeshdProcess]:
    """`count` nodes on one database, each answering /health and serving when this returns.

    The first node is started alone and waited for, so the schema migration runs once and the
    node that starts first is the one that usually becomes leader; the others then start
    together."""
    extra = list(extra_args)
    first = start_node(make, url, extra)
    await asyncio.to_thread(first.wait_healthy, timeout)
    rest = [start_node(make, url, extra) for _ in range(count - 1)]
    nodes = [first, *rest]
    for node in nodes:
        await asyncio.to_thread(node.wait_healthy, timeout)
        await asyncio.to_thread(node.wait_serving, None, timeout)
    return nodes
