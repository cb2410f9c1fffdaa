"""The SQLite-to-PostgreSQL rewrites of the store's portable SQL."""

from __future__ import annotations

from meshd.store.dialect import params, translate


def test_placeholders_and_percent_outside_literals_only():
    stmt = translate("SELECT '?', \"a?\" FROM t WHERE x = ? AND y LIKE 'a%' AND z % 2 = ?")
    assert stmt.sql == ("SELECT '?', \"a?\" FROM t WHERE x = %s AND y LIKE 'a%%'"
                        " AND z %% 2 = %s")


def test_limit_minus_one_means_all():
    sql = translate("SELECT id FROM t ORDER BY x, rowid LIMIT ? OFFSET ?").sql
    assert sql.endswith("LIMIT NULLIF(GREATEST(%s, -1), -1) OFFSET %s")
    assert translate("SELECT 1 LIMIT 1").sql == "SELECT 1 LIMIT 1"


def test_julianday_becomes_epoch_days():
    sql = translate("SELECT 1 WHERE julianday(created_at) + t / 86400000.0 <= julianday(?)").sql
    assert "julianday" not in sql
    assert "EXTRACT(EPOCH FROM CAST(created_at AS timestamp)) * 1000 + 210866760000000" in sql
    assert "CAST(%s AS timestamp)" in sql


def test_select_star_strips_rowid():
    assert translate("SELECT * FROM t").strip_rowid
    assert translate("SELECT a.* FROM t a").strip_rowid
    assert not translate("SELECT id FROM t ORDER BY rowid").strip_rowid


def test_booleans_are_sent_as_integers():
    assert params((True, False, 1, "x", None)) == (1, 0, 1, "x", None)
    assert type(params((True,))[0]) is int
