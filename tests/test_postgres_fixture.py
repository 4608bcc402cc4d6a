"""The throwaway PostgreSQL server of tests/_postgres.py: real server, real outages."""

from __future__ import annotations

import socket

import psycopg
import pytest
from _postgres import PostgresServer, postgres_fixture

postgres = postgres_fixture()


def test_url_is_a_password_url_on_loopback(postgres: PostgresServer) -> None:
    info = psycopg.conninfo.conninfo_to_dict(postgres.url)
    assert info["host"] == "127.0.0.1"
    assert info["port"] == str(postgres.port)
    assert info["user"] == postgres.user and info["password"] == postgres.password
    assert info["dbname"] == postgres.dbname
    with psycopg.connect(postgres.url) as conn:
        row = conn.execute("SELECT current_user, current_database(), inet_server_addr()::text").fetchone()
    assert row == (postgres.user, postgres.dbname, "127.0.0.1/32")


def test_wrong_password_is_refused(postgres: PostgresServer) -> None:
    bad = postgres.url.replace(f":{postgres.password}@", ":not-the-password@")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(bad, connect_timeout=5)


def test_data_survives_stop_and_restart(postgres: PostgresServer) -> None:
    with psycopg.connect(postgres.url) as conn:
        conn.execute("CREATE TABLE ledger_probe (id serial PRIMARY KEY, model text NOT NULL, cost numeric)")
        conn.cursor().executemany(
            "INSERT INTO ledger_probe (model, cost) VALUES (%s, %s)",
            [("gpt-4o", "0.0125"), ("claude-sonnet-4", "0.003")],
        )
    with psycopg.connect(postgres.url) as conn:
        rows = conn.execute("SELECT model, cost::text FROM ledger_probe ORDER BY id").fetchall()
    assert rows == [("gpt-4o", "0.0125"), ("claude-sonnet-4", "0.003")]

    held = psycopg.connect(postgres.url)
    try:
        postgres.stop()
        assert not postgres.running
        # Nothing listens on the port any more, and new connections fail.
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", postgres.port)) != 0
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(postgres.url, connect_timeout=3)
        # A connection opened before the outage is broken too.
        with pytest.raises(psycopg.OperationalError):
            held.execute("SELECT 1")
    finally:
        held.close()
        postgres.start()  # later tests share this server

    assert postgres.running
    with psycopg.connect(postgres.url) as conn:
        rows = conn.execute("SELECT model, cost::text FROM ledger_probe ORDER BY id").fetchall()
        assert rows == [("gpt-4o", "0.0125"), ("claude-sonnet-4", "0.003")]
        conn.execute("INSERT INTO ledger_probe (model, cost) VALUES ('after-restart', 0)")
        conn.execute("DROP TABLE ledger_probe")


def test_server_is_up_for_later_tests(postgres: PostgresServer) -> None:
    with psycopg.connect(postgres.url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
