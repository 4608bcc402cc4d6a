"""Secrets and file modes: a password in any URL or conninfo shape libpq accepts is never printed,
and a ledger llmtally creates is readable by its owner only (what the user made is left alone)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from _postgres import PostgresServer, postgres_fixture

import llmtally
from llmtally.ledger import redact_url
from llmtally.ledger._records import url_secrets

postgres = postgres_fixture()

SECRET = "Zq9#x/y?w@v"  # unencoded "#", "/", "?" and "@": what a pasted password holds

SHAPES = [
    "postgresql://app:{pw}@db.example/prod",
    "postgres://app:{pw}@db.example:5432/prod?sslmode=require",
    "postgresql://db.example/prod?user=app&password={pw}",
    "postgresql://app@db.example/prod?sslpassword={pw}",
    "host=db.example password={pw} dbname=prod",
    "host=db.example dbname=prod password = {pw}",
    "host=db.example password='{pw} with spaces' dbname=prod",
    "host=db.example password = '{pw}://looks-like-a-url' dbname=prod",
    "password={pw}",
]


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_is_redacted(shape: str) -> None:
    url = shape.format(pw=SECRET)
    shown = redact_url(url)
    assert SECRET not in shown and "***" in shown
    assert any(SECRET in s for s in url_secrets(url))


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("postgresql://db/prod?user=app&password=Pw=Key&more", "postgresql://db/prod?user=app&password=***"),
        (
            "postgresql://db/prod?password=a&b&sslmode=disable",
            "postgresql://db/prod?password=***&sslmode=disable",
        ),
        (
            "postgresql://db/prod?password=x&user=y&sslpassword=q&r",
            "postgresql://db/prod?password=***&user=y&sslpassword=***",
        ),
    ],
)
def test_an_unencoded_ampersand_in_a_query_password(url: str, kept: str) -> None:
    """Its tail (``&more``) was shown in clear: the password runs to the next parameter libpq knows."""
    assert redact_url(url) == kept


@pytest.mark.parametrize("shape", SHAPES)
def test_no_command_prints_it(shape: str, postgres: PostgresServer, tmp_path: Path) -> None:
    """Through the CLI as a user meets it: a report on that URL fails, and says why without it."""
    url = shape.format(pw=SECRET).replace("db.example", "127.0.0.1").replace(":5432", f":{postgres.port}")
    env = {**os.environ, "LLMTALLY_SPOOL_DIR": str(tmp_path)}
    for argv in (["report", "--ledger", url], ["budget", "list", "--ledger", url]):
        out = subprocess.run(
            [sys.executable, "-m", "llmtally", *argv], capture_output=True, text=True, timeout=60, env=env
        )
        assert out.returncode != 0
        assert SECRET not in out.stdout + out.stderr
        assert SECRET.split("#")[0] not in out.stderr  # nor its first part, cut at the "#"


def test_a_wrong_password_through_configure(postgres: PostgresServer) -> None:
    url = f"postgresql://{postgres.user}:{SECRET}@127.0.0.1:{postgres.port}/postgres"
    with pytest.raises(llmtally.LedgerError) as info:
        llmtally.configure(ledger=url)
    # libpq cuts the password at its "?" and quotes the rest: no piece of it may show.
    assert not [piece for piece in ("Zq9", "x/y", "w@v") if piece in str(info.value)], str(info.value)


class TestModes:
    def test_a_new_ledger_and_its_new_directories_are_private(
        self, tmp_path: Path, isolated_spool: Path
    ) -> None:
        path = tmp_path / "new" / "deeper" / "ledger.db"
        llmtally.configure(ledger=f"sqlite:///{path}")
        llmtally.configure(ledger="none")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700

    def test_what_the_user_made_is_left_alone(self, tmp_path: Path, isolated_spool: Path) -> None:
        shared = tmp_path / "shared"
        shared.mkdir(mode=0o755)
        os.chmod(shared, 0o755)
        path = shared / "ledger.db"
        path.touch()
        os.chmod(path, 0o640)
        llmtally.configure(ledger=f"sqlite:///{path}")
        llmtally.configure(ledger="none")
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        assert stat.S_IMODE(shared.stat().st_mode) == 0o755
