"""llmtally: meter every LLM API call a program makes, scoped, priced exactly.

    import llmtally

    with llmtally.track("nightly-report") as t:
        agent.invoke({"messages": [...]})      # openai, anthropic, LangChain, ... all counted
    print(t)
    # Tokens Used: 1929
    #     Prompt Tokens: 1799
    #     Completion Tokens: 130
    # Successful Requests: 4
    # Total Cost (USD): $0.06177

Importing llmtally loads no SDK, HTTP client, price catalogue or database driver: only the public
verbs and the scope machinery are imported here, and the rest of the API loads on first use. The
first scope entered starts the runtime, which hooks the HTTP clients (see ``instrument()``).
The layers, from the top: ``cli`` > this facade > ``_api`` > ``_runtime`` | ``_report`` >
``_capture`` | ``_otel`` > ``_limits`` > ``wire`` | ``_pricing`` | ``_tokens`` | ``ledger`` > ``_core``
(docs/architecture.md).
"""

from __future__ import annotations

from ._api import (
    budget,
    configure,
    estimate,
    flush,
    get_openai_callback,
    instrument,
    is_instrumented,
    report,
    set_price,
    suppress,
    track,
    uninstrument,
)
from ._core.scope import current_scopes
from ._core.tally import Tally
from ._version import __version__

# typing imports re (milliseconds); mypy reads TYPE_CHECKING = False the same way.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import Any

    from ._core.usage import Call, ModelTotals, Usage
    from ._limits import BudgetExceeded, Estimate
    from ._pricing import cost_of
    from ._report import Report, ReportRow
    from .ledger import LedgerError

__all__ = [
    "BudgetExceeded",
    "Call",
    "Estimate",
    "LedgerError",
    "ModelTotals",
    "Report",
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
    "set_price",
    "suppress",
    "track",
    "uninstrument",
]

# name -> module that defines it, imported on first access (PEP 562).
_LAZY = {
    "BudgetExceeded": "._limits",
    "Call": "._core.usage",
    "Estimate": "._limits",
    "LedgerError": ".ledger",
    "ModelTotals": "._core.usage",
    "Report": "._report",
    "ReportRow": "._report",
    "Usage": "._core.usage",
    "cost_of": "._pricing",
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
