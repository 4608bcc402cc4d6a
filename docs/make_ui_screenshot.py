"""Build the README's dashboard picture: a synthetic two-week ledger, `llmtally ui` over it, and a
screenshot of the overview taken in headless Chromium (the system's, as the browser tests use).

python docs/make_ui_screenshot.py        # writes docs/ui.png
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import time

import llmtally
from llmtally._core.usage import Call, Usage
from llmtally.ledger import open_ledger, to_row
from llmtally.ledger.budgets import BudgetStore
from llmtally.ledger.sqlite import SQLiteLedger

MODELS = {"gpt-4o": 40, "gpt-4o-mini": 300, "claude-sonnet-4-5": 25, "o3": 8, "my-finetune": 20}
SCOPES = [("nightly-report",), ("support-bot",), ("support-bot", "triage"), ("eval",)]
TEAMS = ["search", "support", "growth"]


def ledger(path: str) -> None:
    rng = random.Random(7)
    now = time.time()
    rows = []
    for day in range(14, -1, -1):
        for model, per_day in MODELS.items():
            for _ in range(int(per_day * rng.uniform(0.6, 1.4))):
                provider = "anthropic" if model.startswith("claude") else "openai"
                call = Call(provider, "chat.completions", model)
                call.started_at = now - day * 86400 - rng.uniform(0, 86400 if day else 3600 * 10)
                call.latency = rng.uniform(0.3, 4)
                prompt, completion = rng.randint(200, 6000), rng.randint(20, 900)
                call.usage = Usage(prompt, completion)
                call.ok = rng.random() > 0.02
                call.status = 200 if call.ok else 429
                call.cost = llmtally.cost_of(model, input_tokens=prompt, output_tokens=completion)
                call.scope_path = rng.choice(SCOPES)
                call.tags = {"team": rng.choice(TEAMS)}
                rows.append((call.started_at, to_row(call)))
    rows.sort(key=lambda r: r[0])
    led = SQLiteLedger(path)
    led.write([r for _, r in rows])
    store = BudgetStore(led)
    store.set("team-search", "25", "day")
    store.set("nightly-report", "40", "month")
    led.close()


def main() -> int:
    from playwright.sync_api import sync_playwright

    from llmtally.ui.server import Dashboard

    chromium = (
        os.environ.get("LLMTALLY_CHROMIUM") or shutil.which("chromium") or shutil.which("google-chrome")
    )
    if not chromium:
        print("needs Chromium: apt-get install chromium (or set LLMTALLY_CHROMIUM)", file=sys.stderr)
        return 2
    path = os.path.join(tempfile.mkdtemp(), "ledger.db")
    ledger(path)
    led = open_ledger(f"sqlite:///{path}", create=False)
    assert led is not None
    dash = Dashboard(led, port=0).start()
    while not dash.server.started:
        time.sleep(0.01)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ui.png")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1240})
            page.goto(dash.address + "?since=14d")
            page.wait_for_function("() => Number(document.body.dataset.loaded || 0) > 0")
            page.screenshot(path=out)
            browser.close()
    finally:
        dash.stop()
        led.close()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
