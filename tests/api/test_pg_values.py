"""Values one engine takes and the other refuses: a NUL character in text is stored by SQLite
and refused by PostgreSQL, with a 400 that says why (never a 500)."""

from __future__ import annotations

from tests.conftest import call, register


async def test_nul_character_in_text(client, backend):
    await register(client, "a")
    expected = 400 if backend == "postgresql" else 200
    for path, body in (("/api/messages", {"from": "a", "to": "b", "content": "nul\u0000in"}),
                       ("/api/agents/register", {"name": "x\u0000y"})):
        status, answer = await call(client, "POST", path, body)
        assert status == expected, (path, status, answer)
        if status == 400:
            assert "NUL" in answer["error"], answer
    status, answer = await call(client, "GET", "/api/messages/b\u0000c")
    assert status == expected, answer
