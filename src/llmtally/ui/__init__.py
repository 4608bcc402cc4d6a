"""``llmtally ui``: a live dashboard of the ledger in the browser, one command, nothing to deploy.

An ASGI app (Starlette) served by uvicorn, both from the ``ui`` extra and imported only by this
command: ``import llmtally`` never loads them. The page is static HTML and JavaScript with Chart.js
vendored beside it (``static/vendor``), so it works with no internet and no build step; its
numbers come from the queries of ``llmtally report`` (``overview``), over a ledger opened read-only.

- ``view``: the window and filters of what is looked at, from the page's query string;
- ``overview``: the overview's numbers; ``calls``: the calls behind them, one call, CSV;
- ``app``: the routes and the guard (host, token, headers); ``server``: binding and serving.
"""

from __future__ import annotations

__all__ = ["MISSING", "UIUnavailable", "check_installed"]

#: What to say when the extra is not installed.
MISSING = "llmtally ui needs the ui extra: pip install 'llmtally[ui]'"


class UIUnavailable(RuntimeError):
    """The ``ui`` extra (Starlette, uvicorn) is not installed."""


def check_installed() -> None:
    """Raise ``UIUnavailable`` (one line, naming the install command) if the extra is missing."""
    import importlib.util

    missing = [name for name in ("starlette", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise UIUnavailable(f"{MISSING} ({', '.join(missing)} not found)")
