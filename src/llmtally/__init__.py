"""llmtally: meter every LLM API call a program makes, scoped, priced exactly.

    import llmtally

    with llmtally.track("nightly-report") as t:
        agent.invoke({"messages": [...]})      # openai, anthropic, LangChain, ... all counted
    print(t)
    # Tokens Used: 1929
    #     Prompt Tokens: 1799
    #     Completion Tokens: 130
    # Successful Requests: 3
    # Total Cost (USD): $0.06177

Importing llmtally loads no SDK, HTTP client, price catalogue or database driver: only the scope
machinery is imported here, and the rest of the public API loads on first use. The first
``track()`` hooks the HTTP clients (see ``instrument()``).
"""

from __future__ import annotations

from ._scope import ModelTotals, Tally, current_scopes, track

# typing imports re (milliseconds); mypy reads TYPE_CHECKING = False the same way.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import Any

    from ._budget import BudgetExceeded, Estimate, budget, estimate
    from ._capture import instrument, is_instrumented, uninstrument
    from ._config import configure, flush
    from ._pricing import cost_of
    from ._report import ReportRow, report
    from ._usage import Call, Usage
    from .ledger import LedgerError

__version__ = "0.1.0"

__all__ = [
    "BudgetExceeded",
    "Call",
    "Estimate",
    "LedgerError",
    "ModelTotals",
    "ReportRow",
    "Tally",
    "Usage",
    "__version__",
    "budget",
    "configure",
    "cost_of",
    "current_scopes",
    "estimate",
    "flush",
    "get_openai_callback",
    "instrument",
    "is_instrumented",
    "report",
    "track",
    "uninstrument",
]

# name -> module that defines it, imported on first access (PEP 562).
_LAZY = {
    "BudgetExceeded": "._budget",
    "Estimate": "._budget",
    "estimate": "._budget",
    "budget": "._budget",
    "Call": "._usage",
    "LedgerError": ".ledger",
    "configure": "._config",
    "flush": "._config",
    "Usage": "._usage",
    "cost_of": "._pricing",
    "instrument": "._capture",
    "is_instrumented": "._capture",
    "uninstrument": "._capture",
    "report": "._report",
    "ReportRow": "._report",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'llmtally' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def get_openai_callback(name: str | None = None) -> Any:
    """LangChain's ``get_openai_callback``, for every provider: the same as ``track()``.

    Code written for LangChain runs by changing only its import line::

        from llmtally import get_openai_callback

        with get_openai_callback() as cb:
            llm.invoke("Tell me a joke")
        print(cb)
    """
    return track(name)
