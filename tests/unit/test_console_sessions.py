"""Console sessions: saved so a new worker knows them, never with the cookie's id itself,
expired ones forgotten, the oldest dropped past the bound, and the same-origin rule."""

from __future__ import annotations

import stat

from aiohttp.test_utils import make_mocked_request

from meshd.api.console import sessions as mod
from meshd.api.console.sessions import ADMIN, VIEWER, LoginThrottle, Sessions, same_origin


def test_a_new_worker_knows_the_sessions_of_the_last(tmp_path):
    path = tmp_path / "console-sessions.json"
    first = Sessions(path)
    sid, session = first.create(ADMIN)
    again = Sessions(path).get(sid)
    assert again is not None and again.is_admin and again.csrf == session.csrf
    assert sid not in path.read_text(), "the file holds digests, not usable cookie ids"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_logout_and_expiry_forget_a_session(tmp_path):
    path = tmp_path / "s.json"
    sessions = Sessions(path, lifetime=60)
    sid, session = sessions.create(VIEWER)
    sessions.drop(session)
    assert sessions.get(sid) is None and Sessions(path).get(sid) is None
    short = Sessions(path, lifetime=-1)
    old_sid, _ = short.create(VIEWER)
    assert short.get(old_sid) is None
    assert Sessions(path).get(old_sid) is None


def test_the_oldest_session_goes_past_the_bound(monkeypatch):
    monkeypatch.setattr(mod, "MAX_SESSIONS", 3)
    sessions = Sessions()
    ids = [sessions.create(VIEWER)[0] for _ in range(4)]
    assert sessions.get(ids[0]) is None
    assert all(sessions.get(i) is not None for i in ids[1:])


def test_an_unreadable_file_starts_empty(tmp_path):
    path = tmp_path / "s.json"
    path.write_text("{not json")
    assert Sessions(path).get("anything") is None


def test_same_origin_compares_origin_or_referer_with_the_host():
    def req(**headers):
        return make_mocked_request("POST", "/x", headers={"Host": "mesh:4000", **headers})

    assert same_origin(req(Origin="http://mesh:4000"))
    assert same_origin(req(Origin="http://MESH:4000/"))
    assert not same_origin(req(Origin="http://mesh:4001"))
    assert not same_origin(req(Origin="https://mesh:4000"))
    assert not same_origin(req(Origin="http://evil.example"))
    assert same_origin(req(Referer="http://mesh:4000/login"))
    assert not same_origin(req(Referer="http://evil.example/mesh:4000"))
    assert not same_origin(req(Origin="null"))
    assert not same_origin(req())


def test_login_throttle_blocks_one_address_and_forgets_old_failures():
    throttle = LoginThrottle(limit=2, window=60)
    throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") is None
    throttle.failed("10.0.0.1")
    assert 0 < throttle.retry_after("10.0.0.1") <= 60
    assert throttle.retry_after("10.0.0.2") is None
    expired = LoginThrottle(limit=1, window=-1)
    expired.failed("10.0.0.1")
    assert expired.retry_after("10.0.0.1") is None
    bounded = LoginThrottle(limit=1, max_addresses=2)
    for address in ("a", "b", "c"):
        bounded.failed(address)
    assert bounded.retry_after("a") is None and bounded.retry_after("c") is not None
