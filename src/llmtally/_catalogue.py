"""An updated price catalogue, fetched only when asked: ``llmtally prices update``.

llmtally prices from genai-prices' bundled catalogue. ``update()`` fetches genai-prices' newest
published data (its ``data.json``; a URL the user can change), validates it with genai-prices' own
parser, and keeps it in the user's data directory, the previous one beside it; from then on every
process prices from it. Nothing is ever fetched automatically, and a download that is not a valid
catalogue changes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import UTC, datetime
from typing import Any

__all__ = ["DEFAULT_URL", "CatalogueError", "path", "snapshot", "update"]

log = logging.getLogger("llmtally")

#: Where genai-prices publishes its data (``genai_prices.update_prices.DEFAULT_UPDATE_URL``).
DEFAULT_URL = (
    "https://raw.githubusercontent.com/pydantic/genai-prices/refs/heads/main/prices/new_data/v2/data.json"
)
ENV_URL = "LLMTALLY_PRICES_URL"
_MAX_BYTES = 64 * 1024 * 1024

_lock = threading.Lock()
if hasattr(os, "register_at_fork"):  # a fork while another thread held it must not hang the child
    os.register_at_fork(after_in_child=_lock._at_fork_reinit)  # type: ignore[attr-defined]
#: [the saved catalogue's snapshot, or False once looked for and not found / not usable]
_loaded: list[Any] = [None]


class CatalogueError(Exception):
    """A catalogue update that could not be used; the catalogue in force is unchanged."""


def path() -> str:
    """Where an updated catalogue is kept: ``catalogue.json`` in the user's data directory."""
    override = os.environ.get("LLMTALLY_DATA_DIR")
    if override:
        return os.path.join(override, "catalogue.json")
    from platformdirs import user_data_dir

    return os.path.join(user_data_dir("llmtally", appauthor=False), "catalogue.json")


def snapshot() -> Any:
    """The updated catalogue (a genai-prices ``DataSnapshot``), or ``None`` to use the bundled one."""
    loaded = _loaded[0]
    if loaded is None:
        with _lock:
            loaded = _loaded[0]
            if loaded is None:
                loaded = _load(path()) or False
                _loaded[0] = loaded
    return loaded or None


def _load(file: str) -> Any:
    if not os.path.exists(file):
        return None
    try:
        with open(file, "rb") as f:
            providers = _parse(f.read())
    except (OSError, CatalogueError) as exc:
        log.error(
            "llmtally: the updated price catalogue %s cannot be used (%s); using the bundled one", file, exc
        )
        return None
    from genai_prices.data_snapshot import DataSnapshot

    return DataSnapshot(
        providers, from_auto_update=False, timestamp=datetime.fromtimestamp(os.path.getmtime(file))
    )


def _parse(raw: bytes) -> list[Any]:
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CatalogueError(f"not JSON: {exc}") from None
    if not isinstance(payload, list) or not payload:
        raise CatalogueError("not a genai-prices catalogue: expected a list of providers")
    from genai_prices.types import _providers_from_raw

    try:
        providers: list[Any] = _providers_from_raw(payload)
    except Exception as exc:  # pydantic's ValidationError, and anything else the parser raises
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CatalogueError(f"not a valid genai-prices catalogue: {first}") from None
    if not any(p.models for p in providers):
        raise CatalogueError("not a genai-prices catalogue: no models")
    return providers


def update(url: str | None = None, timeout: float = 30) -> list[str]:
    """Fetch, validate and keep the newest catalogue; returns what changed, a line each.

    Raises ``CatalogueError`` (naming the URL and the problem) and changes nothing if the download
    fails or is not a valid catalogue.
    """
    import urllib.request

    url = url or os.environ.get(ENV_URL) or DEFAULT_URL
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers={"User-Agent": "llmtally"}), timeout=timeout
        ) as r:
            raw = r.read(_MAX_BYTES + 1)
    except OSError as exc:
        raise CatalogueError(f"{url}: {exc}") from None
    if len(raw) > _MAX_BYTES:
        raise CatalogueError(f"{url}: larger than {_MAX_BYTES // 2**20} MB")
    try:
        providers = _parse(raw)
    except CatalogueError as exc:
        raise CatalogueError(f"{url}: {exc}") from None
    from genai_prices import data_snapshot

    current = snapshot() or data_snapshot.get_snapshot()
    changes = _diff(current.providers, providers)
    file = path()
    os.makedirs(os.path.dirname(file), exist_ok=True)
    tmp = f"{file}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(raw)
        f.flush()
        os.fsync(f.fileno())
    if os.path.exists(file):
        os.replace(file, file.replace(".json", ".previous.json"))
    os.replace(tmp, file)
    with _lock:
        _loaded[0] = None  # this process prices from the new one too
    stamp = datetime.now(tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [f"catalogue updated from {url} at {stamp}: {file}", *changes]


def _diff(old: list[Any], new: list[Any]) -> list[str]:
    def prices(providers: list[Any]) -> dict[str, str]:
        out = {}
        for p in providers:
            for m in p.models:
                current = m.prices if not isinstance(m.prices, list) else m.prices[-1].prices
                out[f"{p.id}/{m.id}"] = str(current)
        return out

    before, after = prices(old), prices(new)
    added = sorted(after.keys() - before.keys())
    removed = sorted(before.keys() - after.keys())
    moved = sorted(k for k in after.keys() & before.keys() if after[k] != before[k])
    lines = [f"{len(added)} models added, {len(removed)} removed, {len(moved)} with new prices"]
    lines += [f"  + {k}: {after[k]}" for k in added[:50]]
    lines += [f"  ~ {k}: {before[k]} -> {after[k]}" for k in moved[:50]]
    lines += [f"  - {k}" for k in removed[:50]]
    return lines
