"""Which provider serves a call whose host does not say: gateways, proxies, private deployments.

The providers' own hosts name themselves (``wire.provider_for_host``). A call to a gateway, a proxy,
an IP address or a self-hosted server is priced by the API pattern of its URL and then by the model
name alone, which misses models whose names only their provider knows (Groq's
``llama-3.3-70b-versatile``). So the user says which provider a base URL serves::

    llmtally.configure(providers={"llm-gateway.internal": "openai",
                                  "https://proxy.example.com/groq": "groq"})

or ``LLMTALLY_PROVIDERS="llm-gateway.internal=openai,proxy.example.com/groq=groq"``. A key is a host
or a URL: its host and path prefix are matched (the longest prefix first, on whole path segments);
its scheme and port are not, since the HTTP clients name hosts without them. The provider is a
catalogue id (``openai``, ``groq``, ``openrouter``, ``aws``, ...), checked when the mapping is set.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

__all__ = ["ENV_PROVIDERS", "configured", "parse", "provider_for", "set_table"]

ENV_PROVIDERS = "LLMTALLY_PROVIDERS"

#: host -> ((path prefix, provider id), ...), longest prefix first; replaced whole, never mutated.
_table: list[dict[str, tuple[tuple[str, str], ...]]] = [{}]


def parse(mapping: Mapping[str, str] | str, known: frozenset[str]) -> dict[str, tuple[tuple[str, str], ...]]:
    """The table for ``mapping`` (a dict, or the environment's ``key=provider,...``); raises
    ``ValueError`` naming the entry that is not a host or URL, or whose provider is not in ``known``
    (the catalogue's provider ids)."""
    if isinstance(mapping, str):
        pairs = []
        for item in mapping.split(","):
            if not item.strip():
                continue
            key, sep, provider = item.rpartition("=")
            if not sep or not key.strip():
                raise ValueError(f"{item.strip()!r} is not base_url=provider")
            pairs.append((key.strip(), provider.strip()))
    elif isinstance(mapping, Mapping):
        pairs = list(mapping.items())
    else:
        raise ValueError(f"providers must map base URLs to provider ids, not {type(mapping).__name__}")
    routes: dict[str, list[tuple[str, str]]] = {}
    for key, provider in pairs:
        if not isinstance(key, str) or not isinstance(provider, str):
            raise ValueError(f"providers: {key!r}: {provider!r} is not a base URL and a provider id")
        url = urlsplit(key if "://" in key else "//" + key)
        host = (url.hostname or "").lower()
        if not host or any(c.isspace() for c in key):
            raise ValueError(f"providers: {key!r} is not a host or a base URL")
        provider = provider.lower().strip()
        if provider not in known:
            raise ValueError(
                f"providers: {key!r} maps to {provider!r}, which is not a provider the price "
                f"catalogue knows (for example: {', '.join(sorted(known)[:12])}, ...)"
            )
        routes.setdefault(host, []).append((url.path.rstrip("/"), provider))
    return {h: tuple(sorted(r, key=lambda p: -len(p[0]))) for h, r in routes.items()}


def set_table(table: dict[str, tuple[tuple[str, str], ...]]) -> None:
    _table[0] = table


def provider_for(host: str, path: str) -> str | None:
    """The provider configured for this host and path, or ``None``."""
    routes = _table[0].get(host.lower())
    if routes:
        for prefix, provider in routes:
            if not prefix or path == prefix or path.startswith(prefix + "/"):
                return provider
    return None


def configured() -> bool:
    return bool(_table[0])
