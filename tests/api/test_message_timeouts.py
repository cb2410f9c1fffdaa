"""The timeout sweep's date arithmetic (`julianday` on SQLite, its rewrite on PostgreSQL):
a pending message times out exactly when `created_at + timeout_ms` has passed."""

from __future__ import annotations

from meshd.store import messages

CREATED = "2026-01-01 00:00:00"


async def test_sweep_times_out_at_the_deadline(storage):
    async def send(timeout_ms, to="b"):
        row, _ = await storage.write(
            messages.send, messages.Outgoing("a", to, "x", None, timeout_ms), CREATED)
        return row["id"]

    five, ten, never = await send(5000), await send(10000), await send(None)
    delivered = await send(1000, to="c")
    await storage.write(messages.set_status, delivered, "delivered", None)

    async def sweep(now):
        return sorted(r["id"] for r in await storage.write(messages.time_out_expired, now))

    assert await sweep("2026-01-01 00:00:04") == []
    assert await sweep("2026-01-01 00:00:05") == [five]
    assert await sweep("2026-01-01 00:00:09") == []  # already timed out: not again
    assert await sweep("2026-01-02 00:00:00") == [ten]
    statuses = {r["id"]: r["status"] for r in await storage.read(
        lambda db: db.query("SELECT id, status FROM messages"))}
    assert statuses == {five: "timeout", ten: "timeout", never: "pending",
                        delivered: "delivered"}
