"""Hostile input: role, database and application names built to break JSON and SQL.

1. 200+ generated role names — quotes, backslashes, $$, JSON and SQL metacharacters,
   control characters, characters from every Unicode plane that has them (0-3, 14-16),
   names of exactly 63 bytes and longer ones that PostgreSQL truncates — each logs in
   (with an application_name of the same kind, into a database with a hostile name for
   some): every payload received is valid JSON whose userName, databaseName and
   applicationName equal what PostgreSQL stored (pg_roles, pg_database,
   pg_stat_activity).
"""

from __future__ import annotations

import json

from psycopg import sql

DATABASE_EVERY = 8  # every 8th name also gets a database of its own

PIECES = [
    "o'brien", 'say "hi"', "back\\slash", "trailing\\", "$$; DROP TABLE x; --", "$tag$ $$",
    '{"json": [1, null, true]}', "}]\"", "'); DELETE FROM t; --", "%s %n %x", "<script>",
    "tab\there", "new\nline", "cr\rreturn", "bell\x07", "esc\x1b[31mred", "del\x7f", "nul-ish \\0",
    "\x01\x02\x1f", "unicode é ü ß", "日本語のユーザー", "🎉 party", "𐍈 gothic", "𠜎 ext-b",
    "\U00030000 plane 3", "\U000E0041 tag", "\U000F0000 private", "\U0010FFFD plane 16",
    "\u202e right-to-left", "zero\u200bwidth", " leading", "trailing ", "comma, name", "semi;colon",
    "back`tick`", "pipe|amp&", "*", "\\u0000", "=equals=", "#hash",
]


def truncate_63(name: str) -> str:
    """What PostgreSQL stores for an over-long identifier: at most 63 bytes, whole characters."""
    out = ""
    for ch in name:
        if len((out + ch).encode()) > 63:
            break
        out += ch
    return out


def hostile_names() -> list[str]:
    names = [f"{i:03d} {piece}" for i, piece in enumerate(PIECES * 5)]
    names += ["a" * 63, "é" * 31 + "x", "日" * 21, "x" * 80, "é" * 40, "🎉" * 20,
              "q'" * 40, '"\\' * 40]
    return names


def test_1_hostile_names_arrive_exactly_as_stored(ln):
    names = hostile_names()
    assert len(names) >= 200
    stored = []
    for i, name in enumerate(names):
        role = truncate_63(name)
        ln.cluster.sql(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        dbname = "postgres"
        if i % DATABASE_EVERY == 0:
            dbname = truncate_63(f"db {name}")
            ln.cluster.sql(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        stored.append((role, dbname))
    assert ln.cluster.sql_value("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)",
                                [[role for role, _ in stored]]) == len(set(r for r, _ in stored))
    try:
        logins = [ln.login(role, dbname, application_name=name[:100])
                  for name, (role, dbname) in zip(names, stored)]
        for login, (role, dbname) in zip(logins, stored):
            assert (login.user, login.dbname) == (role, dbname)  # what pg_stat_activity shows
        by_pid = {}
        ln.endpoint.wait_for(lambda r: r.field("backendPid") in {l.pid for l in logins},
                             count=len(logins), timeout=60)
        for request in ln.endpoint.requests:
            parsed = json.loads(request.body)  # valid JSON, byte for byte as received
            by_pid[parsed["backendPid"]] = parsed
        for login in logins:
            payload = by_pid[login.pid]
            assert payload["userName"] == login.user, (payload["userName"], login.user)
            assert payload["databaseName"] == login.dbname
            assert payload["applicationName"] == login.application_name
            ln.assert_payload(payload, login)
    finally:
        for role, dbname in stored:
            if dbname != "postgres":
                ln.cluster.sql(sql.SQL("DROP DATABASE {}").format(sql.Identifier(dbname)))
            ln.cluster.sql(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
