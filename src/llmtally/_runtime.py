"""The one owner of llmtally's process state: started or not, the hooks, the ledger, the exporters.

Everything that lives as long as the process and can change is held by ``RUNTIME`` (one
``Runtime``), changed under its one lock, and nowhere else:

- **start / stop**: the HTTP client adapters (patched now, or on import), thread propagation, the
  catalogue warm-up (``instrument()`` / ``uninstrument()`` in the public API);
- **configure**: the ledger and its writer thread, the OpenTelemetry exporter; the pipeline's
  sinks, eager flag and span getter are written here and only read elsewhere;
- **flush**, and the hooks that flush at exit, on SIGTERM, and restart the writer after a fork;
- **which ledger**: ``ledger_url()`` decides it for every caller -- the writer, ``report()``,
  ``budget()``, ``llmtally run`` and the command line -- in one order: the URL given, else the one
  configured, else ``LLMTALLY_LEDGER``, else the caller's default;
- the shared-budget stores, one per ledger URL.

Caches keyed by immutable inputs (resolved prices, tokenizers, routes) stay with their modules.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any, NoReturn

from ._core import scope
from ._core.pipeline import PIPELINE
from .ledger import ENV_LEDGER, LedgerError, open_ledger, redact_url

if TYPE_CHECKING:
    from collections.abc import Mapping
    from decimal import Decimal

    from ._capture import Adapter
    from ._core.pipeline import Sink
    from ._otel import OTelSink
    from .ledger._writer import Writer
    from .ledger.budgets import BudgetStore

__all__ = ["RUNTIME", "Runtime"]

#: Modules a call is settled and recorded through (see ``Runtime._before_fork``).
_SETTLE_MODULES = (
    "llmtally._capture.settle",
    "llmtally._pricing",
    "llmtally._tokens",
    "llmtally.ledger._records",
    "llmtally.ledger._spool",
    "llmtally.ledger._writer",
)

log = logging.getLogger("llmtally")


class Runtime:
    """llmtally's process state; see the module docstring. One instance: ``RUNTIME``."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.started = False
        #: ``configure(ledger=...)`` was called: the environment no longer decides what is recorded
        #: (after ``configure(ledger="none")`` reports still read ``LLMTALLY_LEDGER``; see ledger_url).
        self._configured = False
        self._ledger_url: str | None = None
        self.writer: Writer | None = None
        self._otel: OTelSink | None = None
        self._extra_sinks: tuple[Sink, ...] = ()
        self.adapters: list[Adapter] | None = None
        self._threads: Any = None
        self._processes: Any = None
        self._finder: Any = None
        self._stores: dict[str, BudgetStore] = {}
        self._exit_hooks = False
        self._fork_hooks = False
        self._warming: threading.Thread | None = None
        #: ``configure(providers=...)`` was called: ``LLMTALLY_PROVIDERS`` no longer applies.
        self._providers_configured = False
        self._prices_configured = False
        self._currency_configured = False

    # -- start / stop -----------------------------------------------------------------------------
    def start(self) -> None:
        """Hook the HTTP clients and threads; honour ``LLMTALLY_LEDGER``. Idempotent."""
        with self._lock:
            if self.started:
                return
            import sys

            from ._capture import ADAPTERS, PatchOnImport, ProcessesInstrumentor, ThreadsInstrumentor
            from ._capture import processes as process_hooks
            from ._pricing import warm

            if self.adapters is None:
                self.adapters = [cls() for cls in ADAPTERS]
                self._threads = ThreadsInstrumentor()
                self._processes = ProcessesInstrumentor()
                self._finder = PatchOnImport()
                process_hooks.ledger_of = self._ledger_for_workers
                process_hooks.store_of = self.budget_store
            for adapter in (*self.adapters, self._processes):
                for name in adapter.modules:
                    module = sys.modules.get(name)
                    if module is not None:
                        adapter.patch(module)
                    self._finder.watch(name, adapter.patch)
            self._finder.install()
            self._threads.patch()
            self.started = True
            scope.mark_started(True)
            self._flush_if_multiprocessing_child()
            if self._warming is None:
                self._warming = warm()
            self._install_fork_hooks()
        self._configure_from_env()

    def stop(self) -> None:
        """Remove every hook ``start()`` installed; clients behave exactly as before."""
        with self._lock:
            if self.adapters is not None:
                self._finder.remove()
                for adapter in self.adapters:
                    adapter.unpatch()
                self._threads.unpatch()
                self._processes.unpatch()
            self.started = False
            scope.mark_started(False)

    # -- configuration ------------------------------------------------------------------------------
    def configure(
        self,
        *,
        ledger: str | None = None,
        flush_interval: float | None = None,
        otel: Any = None,
        providers: Any = None,
        prices: str | None = None,
        currency: str | None = None,
        rates: Any = None,
    ) -> None:
        """See ``llmtally.configure``."""
        with self._lock:
            if currency is not None or rates is not None:
                self._configure_currency(currency, rates)  # raises before anything changes
            if prices is not None:
                self._configure_prices(prices)  # raises before anything changes
            if providers is not None:
                self._configure_providers(providers)  # raises before anything changes
            if otel is not None:
                self._configure_otel(otel)
            if ledger is not None:
                self._configure_ledger(ledger, flush_interval)
        if PIPELINE.sinks:
            self.start()  # calls must be captured to reach the sinks

    def _configure_ledger(self, url: str, flush_interval: float | None) -> None:
        from .ledger._writer import Writer

        new = open_ledger(url)  # raises before anything changes
        old, self.writer = self.writer, None
        self._configured = True
        self._ledger_url = None
        if new is not None:
            self._ledger_url = url
            self.writer = Writer(new, interval=flush_interval or 0.5)
            self._install_exit_hooks()
        self._set_sinks()
        if old is not None:
            old.close()

    def _configure_currency(self, code: str | None, rates: Any) -> None:
        from ._core import currency

        shown, table = currency.parse(
            code or currency.display(), currency.rates() if rates is None else rates
        )
        currency.set_currency(shown, table)
        self._currency_configured = True

    def money(self) -> tuple[str, Mapping[str, Decimal]]:
        """The display currency and rates: as configured, else ``LLMTALLY_CURRENCY`` /
        ``LLMTALLY_RATES`` (a bad value raises ``ValueError`` naming it), else USD."""
        from ._core import currency

        if not self._currency_configured:
            code, rates = os.environ.get(currency.ENV_CURRENCY), os.environ.get(currency.ENV_RATES)
            if code or rates:
                try:
                    return currency.parse(code or "USD", rates or {})
                except ValueError as exc:
                    raise ValueError(f"{currency.ENV_CURRENCY}/{currency.ENV_RATES}: {exc}") from None
        return currency.display(), currency.rates()

    def _configure_prices(self, path: str) -> None:
        from ._core import user_prices

        user_prices.set_entries(files=user_prices.load(path) if path else ())
        self._prices_configured = True

    def _configure_providers(self, providers: Any) -> None:
        from ._core import gateways
        from ._pricing import provider_ids

        gateways.set_table(gateways.parse(providers, provider_ids()))
        self._providers_configured = True

    def _configure_otel(self, otel: Any) -> None:
        """``True``: the global OpenTelemetry providers; a MeterProvider, a TracerProvider or a tuple
        of both: those (the global one for the other); ``False``: off. A bad value changes nothing."""
        sink = getter = None
        if otel is not False:
            try:
                from opentelemetry import trace

                from ._otel import OTelSink
            except ImportError as exc:
                raise RuntimeError('OpenTelemetry export needs: pip install "llmtally[otel]"') from exc
            sink = OTelSink(otel)  # raises TypeError for what is no provider
            getter = trace.get_current_span
        self._otel = sink
        PIPELINE.span_getter = getter
        self._set_sinks()

    def _set_sinks(self) -> None:
        sinks: list[Sink] = []
        if self.writer is not None:
            sinks.append(self.writer.sink)
        if self._otel is not None:
            sinks.append(self._otel)
        sinks += self._extra_sinks
        PIPELINE.sinks = tuple(sinks)
        PIPELINE.refusal_sinks = (self.writer.note_refusal,) if self.writer is not None else ()
        # OpenTelemetry wants its metrics as each call ends, not on the next read.
        PIPELINE.eager = self._otel is not None

    def add_sink(self, sink: Sink) -> None:
        """Send every settled call to ``sink(call)`` as well, scope or no scope (tests, extensions)."""
        with self._lock:
            if sink not in self._extra_sinks:
                self._extra_sinks += (sink,)
            self._set_sinks()
        self.start()

    def remove_sink(self, sink: Sink) -> None:
        with self._lock:
            self._extra_sinks = tuple(s for s in self._extra_sinks if s != sink)
            self._set_sinks()

    def _configure_from_env(self) -> None:
        """Honour ``LLMTALLY_LEDGER`` and ``LLMTALLY_PROVIDERS`` unless ``configure()`` chose; a bad
        value is logged, not raised."""
        from ._core.currency import ENV_CURRENCY, ENV_RATES
        from ._core.gateways import ENV_PROVIDERS
        from ._core.user_prices import ENV_PRICES, default_path

        code, rates = os.environ.get(ENV_CURRENCY), os.environ.get(ENV_RATES)
        if (code or rates) and not self._currency_configured:
            try:
                with self._lock:
                    self._configure_currency(code, rates or {})
            except ValueError as exc:
                log.error("llmtally: %s/%s: %s; costs stay in USD", ENV_CURRENCY, ENV_RATES, exc)
        prices = os.environ.get(ENV_PRICES)
        if not self._prices_configured and (prices or os.path.exists(default_path())):
            try:
                with self._lock:
                    self._configure_prices(prices or default_path())
            except ValueError as exc:
                log.error("llmtally: %s; calls are priced without that price file", exc)
        providers = os.environ.get(ENV_PROVIDERS)
        if providers and not self._providers_configured:
            try:
                with self._lock:
                    self._configure_providers(providers)
            except ValueError as exc:
                log.error("llmtally: %s: %s; calls are priced without it", ENV_PROVIDERS, exc)
        url = os.environ.get(ENV_LEDGER)
        if self._configured or not url:
            return
        try:
            self.configure(ledger=url)
        except LedgerError as exc:
            log.error("llmtally: %s=%r: %s; calls are not recorded", ENV_LEDGER, redact_url(url), exc)

    # -- which ledger -------------------------------------------------------------------------------
    def ledger_url(self, explicit: str | None = None, *, default: str | None = "sqlite://") -> str | None:
        """The ledger to use: ``explicit``, else the configured one, else ``LLMTALLY_LEDGER``, else
        ``default`` (the default SQLite file unless the caller says otherwise)."""
        if explicit:
            return explicit
        if self._ledger_url is not None:
            return self._ledger_url
        return os.environ.get(ENV_LEDGER) or default

    def join_run(self, run_id: str | None) -> None:
        """Make every call from now on carry ``run_id`` (``llmtally run``'s, in every process of its tree)."""
        from ._core.usage import RUN

        RUN.id = run_id

    def configured_ledger(self) -> str | None:
        """The URL of the ledger the process records to now (password included: never print it)."""
        return self._ledger_url if self.writer is not None else None

    def budget_store(self, url: str) -> BudgetStore:
        """The shared-budget store of a ledger, opened once per URL."""
        with self._lock:
            store = self._stores.get(url)
            if store is None:
                from .ledger.budgets import BudgetStore

                ledger = open_ledger(url)
                if ledger is None:
                    raise LedgerError(
                        "shared budgets need a ledger (sqlite:///... or postgresql://...), not 'none'"
                    )
                store = self._stores[url] = BudgetStore(ledger)
                self._install_exit_hooks()  # streams open at exit settle their reservations
            return store

    # -- flushing -----------------------------------------------------------------------------------
    def flush(self, timeout: float | None = 30) -> bool:
        """Settle every queued call and, with a ledger, wait until it is written. ``False`` on timeout."""
        PIPELINE.flush()
        writer = self.writer
        return True if writer is None else writer.flush(timeout)

    def where(self) -> str:
        """Where this process's calls went, as a summary ends by saying it."""
        writer = self.writer
        if writer is None:
            return "not recorded (no ledger: pass --ledger URL or set LLMTALLY_LEDGER)"
        spool = writer.spool
        try:
            waiting = len(spool.read()) if spool is not None and spool.pending() else 0
        except OSError:
            waiting = 0
        if waiting and spool is not None:
            return (
                f"{waiting} record(s) wait in {spool.path} until the ledger {writer.ledger.url} can be "
                "written (`llmtally ledger status`)"
            )
        return f"recorded in the ledger {writer.ledger.url}"

    def _ledger_for_workers(self) -> str | None:
        """The ledger a spawned worker writes to: this process's ("none" if it has none by choice)."""
        writer = self.writer
        if writer is not None:
            return str(writer.ledger.url)
        return "none" if self._configured else None

    def _install_exit_hooks(self) -> None:
        if self._exit_hooks:
            return
        self._exit_hooks = True
        atexit.register(self._exit_flush)
        self._install_sigterm()

    #: The flush at exit is running, and a SIGTERM came meanwhile (see ``_install_sigterm``).
    _exiting = False
    _term_pending = False

    def _exit_flush(self) -> None:
        """``_at_exit``, to its end even if a SIGTERM comes meanwhile (then the process dies of it)."""
        self._exiting = True
        try:
            self._at_exit()
        finally:
            self._exiting = False
            if self._term_pending:
                _die_of_sigterm()

    def _at_exit(self) -> None:
        try:  # streams still open at exit: counted from what was read, reservations settled
            # Only if the capture was loaded: importing it now (a command that never metered a call)
            # fails, as the interpreter is shutting down and refuses new exit hooks.
            exchange = sys.modules.get("llmtally._capture.exchange")
            if exchange is not None:
                exchange.end_streams()
            PIPELINE.flush()
        except Exception:  # pragma: no cover
            log.exception("llmtally: could not end the open streams at exit")
        writer = self.writer
        if writer is not None:
            try:
                # Long enough for a write that waits on a locked SQLite file and then spools
                # (sqlite.WRITE_TIMEOUT): the records are on disk either way when the process ends.
                writer.at_exit(timeout=20)
            except Exception:  # pragma: no cover
                log.exception("llmtally: could not flush the ledger at exit")
        _relay_cleanup()

    def _install_fork_hooks(self) -> None:
        if self._fork_hooks or not hasattr(os, "register_at_fork"):
            return
        self._fork_hooks = True
        os.register_at_fork(before=self._before_fork, after_in_child=self._after_fork)

    #: The thread calling ``fork()`` is the main thread (see ``Writer.after_fork``).
    _fork_from_main = True

    def _before_fork(self) -> None:
        self._fork_from_main = threading.current_thread() is threading.main_thread()
        open_scopes = scope.current_scopes()
        if open_scopes:  # the child's calls in them come back here (see _core.relay)
            try:
                from ._core import relay

                for tally in open_scopes:
                    relay.ensure(tally)
            except Exception:  # pragma: no cover - a full temporary folder: the child counts alone
                log.exception("llmtally: the scopes open at fork will not count the child's calls")
        # A fork while the warm-up thread imports the catalogue would leave its import lock held
        # in the child, and the child's first priced call would wait for ever: let it finish.
        warming = self._warming
        if warming is not None and warming.is_alive() and warming is not threading.current_thread():
            warming.join(30)
        # The same for the modules a call settles through, which load lazily on the first calls: if
        # another thread is importing one now, importing it here waits for that import to end.
        import importlib

        for name in _SETTLE_MODULES:
            try:
                importlib.import_module(name)
            except Exception:  # pragma: no cover - an optional part that is not installed
                pass

    def _after_fork(self) -> None:
        """A fork starts clean: the parent's queued calls are the parent's to settle and record."""
        self._lock = threading.RLock()
        PIPELINE.after_fork()
        if self.writer is not None:
            self.writer.after_fork(orphan=not self._fork_from_main)
        if self.started:  # the child's calls are settled (recorded, relayed) before it ends
            self._flush_in_multiprocessing_child()
            _flush_before_os_exit(self)
            self._install_exit_hooks()  # a child ending with sys.exit, with or without a ledger

    def _flush_in_multiprocessing_child(self) -> None:
        """A child forked by multiprocessing (fork, forkserver) ends with ``os._exit``: no atexit. Its
        records are flushed by a multiprocessing finalizer instead, which the child's bootstrap runs as
        its process ends (registered after its bootstrap clears the parent's finalizers)."""
        import sys

        util = sys.modules.get("multiprocessing.util")
        if util is not None:
            util.register_after_fork(self, _finalize_at_exit)

    def _flush_if_multiprocessing_child(self) -> None:
        """Metering started inside a multiprocessing child (a spawned or forkserver worker whose first
        task turned it on): such a child may end with ``os._exit`` (forkserver's do), so its calls are
        settled and written by a multiprocessing finalizer, as a forked child's are."""
        process = sys.modules.get("multiprocessing.process")
        if process is None:
            return
        if process.parent_process() is not None:
            _finalize_at_exit(self)
        else:
            # Maybe a spawned child not yet bootstrapped (metering started while its Process object
            # was unpickled): the bootstrap clears finalizers, then runs these.
            from multiprocessing import util

            util.register_after_fork(self, _finalize_at_exit)

    def _install_sigterm(self) -> None:
        """Flush on SIGTERM, then die of it as the process would have; only where nobody handles it."""
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
            return
        try:
            if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
                return

            def on_term(signum: int, frame: Any) -> None:
                if self._exiting:
                    # The flush at exit is under way (a pool terminating its workers as they end):
                    # let it finish, then die of it; starting over would lose the call it is settling.
                    self._term_pending = True
                    return
                self._at_exit()
                _die_of_sigterm()

            signal.signal(signal.SIGTERM, on_term)
        except (ValueError, OSError):  # pragma: no cover - not the main thread of the main interpreter
            pass


def _finalize_at_exit(runtime: Runtime) -> None:
    """In a multiprocessing child, before its run: flush as it ends (after the program's finalizers)."""
    from multiprocessing.util import Finalize

    Finalize(None, runtime._exit_flush, exitpriority=-1000)


def _flush_before_os_exit(runtime: Runtime) -> None:
    """In a forked child: ``os._exit`` flushes first. A forked child often ends with ``os._exit``
    (no atexit, by design: the parent's exit handlers must not run twice), which would lose the calls
    the child made since its writer's last write; the flush writes only the child's own records."""
    real = os._exit
    if getattr(real, "__wrapped__", None) is not None:
        return  # a grandchild: already wrapped

    def _exit(status: int) -> NoReturn:
        try:
            PIPELINE.flush()
            writer = runtime.writer
            if writer is not None and writer.has_work():
                writer.flush(timeout=20, retry=False)
            _relay_cleanup()
        except BaseException:  # pragma: no cover - exiting regardless
            pass
        real(status)

    _exit.__wrapped__ = real  # type: ignore[attr-defined]
    os._exit = _exit


def _relay_cleanup() -> None:
    """This process's relay folder (scopes it shared with its workers), read and removed; only if the
    relay was ever loaded."""
    relay = sys.modules.get("llmtally._core.relay")
    if relay is not None:
        try:
            relay.cleanup()
        except Exception:  # pragma: no cover
            log.exception("llmtally: could not remove the relay folder")


def _die_of_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


#: The process's runtime.
RUNTIME = Runtime()
