"""The Network Partition protocol's steps on a real database, read as the supervisor reads it
(`ReadOnlyStorage`): an agent deleted while away is listed as deleted, not as back; the agents
still away when partition_max_wait passes are listed as lost."""

from __future__ import annotations

from types import SimpleNamespace

from meshd.recovery import partition
from meshd.recovery.engine import Run
from meshd.store import agents
from meshd.store.readonly import ReadOnlyStorage


def run_for(ids: list[str]) -> Run:
    event = {"id": "e", "description": "2 agents went offline together"}
    return Run("r", "network_partition", "e", "agents_back", "2026-01-01 00:00:00",
               "2026-01-01 00:00:00", context={"agents": ids, "last_seen": {
                   i: "2026-01-01 00:00:00" for i in ids}}, event=event)


async def test_an_agent_deleted_while_away_is_listed_as_deleted(storage, settings):
    back, gone = [(await storage.write(agents.register, name, None, None,
                                       "2026-01-01 00:00:00"))[0] for name in ("back", "gone")]
    await storage.write(lambda tx: tx.execute("DELETE FROM agents WHERE id = ?", (gone,)))
    host = SimpleNamespace(settings=settings, storage=ReadOnlyStorage(settings.database))
    run = run_for([back, gone])
    run.context["returned"] = {back: "2026-01-01 00:00:09", gone: "2026-01-01 00:00:00"}

    detail = await partition.count_synced(host, run)

    assert run.context["deleted"] == [gone]
    assert [s["agentId"] for s in run.context["summary"]] == [back]
    assert detail == f"{back}: 9 s, 0 msgs; {gone}: deleted"
    assert f"{gone} deleted while away" in run.event["description"]


async def test_agents_still_away_at_the_deadline_are_listed_as_lost(settings):
    host = SimpleNamespace(settings=SimpleNamespace(partition_max_wait=5.0), storage=None)
    run = run_for(["a", "b"])
    run.context["returned"] = {"a": "2026-01-01 00:00:03"}
    detail = await partition.list_lost(host, run)
    assert run.context["lost"] == ["b"]
    assert detail == "1 agents back, 1 lost: b"
    assert run.event["description"].endswith("lost after 5 s (health offline): b")
