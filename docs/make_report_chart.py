"""Build the README's report picture: a synthetic two-week ledger, then `llmtally report --chart`.

python docs/make_report_chart.py        # writes docs/report-chart.png and prints the table
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
from datetime import UTC, datetime

import llmtally
from llmtally._core.usage import Call, Usage
from llmtally.cli import cli_logic
from llmtally.ledger import to_row
from llmtally.ledger.sqlite import SQLiteLedger

MODELS = {"gpt-4o": 40, "gpt-4o-mini": 300, "claude-sonnet-4-5": 25, "o3": 8}


def main() -> int:
    rng = random.Random(7)
    start = datetime(2026, 11, 14, tzinfo=UTC).timestamp()
    rows = []
    for day in range(14):
        for model, per_day in MODELS.items():
            for _ in range(int(per_day * rng.uniform(0.6, 1.4))):
                call = Call(
                    "openai" if not model.startswith("claude") else "anthropic", "chat.completions", model
                )
                call.started_at = start + day * 86400 + rng.uniform(0, 86400)
                call.latency = rng.uniform(0.3, 4)
                prompt, completion = rng.randint(200, 6000), rng.randint(20, 900)
                call.usage = Usage(prompt, completion, cached_tokens=rng.choice([0, 0, prompt // 2]))
                call.cost = llmtally.cost_of(
                    model,
                    input_tokens=prompt,
                    output_tokens=completion,
                    cached_tokens=call.usage.cached_tokens,
                )
                call.scope_path = (rng.choice(["search", "support-bot", "nightly-report"]),)
                rows.append(to_row(call))
    path = os.path.join(tempfile.mkdtemp(), "ledger.db")
    ledger = SQLiteLedger(path)
    ledger.write(rows)
    ledger.close()
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "report-chart.png")
    return cli_logic(["report", "--ledger", f"sqlite:///{path}", "--by", "model", "--chart", out])


if __name__ == "__main__":
    sys.exit(main())
