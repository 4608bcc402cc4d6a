"""The dashboard in a real browser: the system's headless Chromium, driven by Playwright.

It reads the totals a person sees and compares them with ``llmtally report``, applies a filter,
drills down from a row and from a bar to the calls and to one call, sees a call made after the page
loaded appear without a reload, and saves screenshots (in pytest's temporary directory, or in
``LLMTALLY_UI_SCREENSHOTS`` if set). Without Chromium these tests skip, saying how to install it.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from _ui import CALLS_MADE, HOSTILE, dashboard, iso, record_calls, report_json

from llmtally._core.text import printable
from llmtally._report import report, totals
from llmtally._report.render import cost_cell

HOW = (
    "the browser tests need Chromium: apt-get install chromium (Debian/Ubuntu; CI's .ci/run does it), "
    "or set LLMTALLY_CHROMIUM to a Chromium or Chrome binary"
)
CHROMIUM = (
    os.environ.get("LLMTALLY_CHROMIUM")
    or shutil.which("chromium")
    or shutil.which("chromium-browser")
    or shutil.which("google-chrome")
)
pytestmark = pytest.mark.skipif(not CHROMIUM, reason=HOW)
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (in the test extra)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        # The system's browser: Playwright's own downloads are not used (nor reachable in CI).
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    where = os.environ.get("LLMTALLY_UI_SCREENSHOTS")
    path = Path(where) if where else tmp_path / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def ledger(tmp_path: Path) -> tuple[str, str, str]:
    """A SQLite ledger of real SDK calls, and a window around them (absolute: the report's too)."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    now = time.time()
    record_calls(url)
    return url, iso(now - 2 * 3600 - 77), iso(now + 3600 + 5)


class Page:
    """A browser tab on the dashboard, failing the test on any script error or CSP violation."""

    def __init__(self, browser: Any, base: str) -> None:
        self.base = base
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))

    def open(self, query: str) -> None:
        self.page.goto(self.base + "?" + query)
        self.loaded()

    def loaded(self, after: int = 0) -> None:
        """Wait until the page has rendered a view (more than ``after`` times)."""
        # A function, not an expression: the page's CSP forbids the eval an expression would need.
        self.page.wait_for_function(f"() => Number(document.body.dataset.loaded || 0) > {after}")

    def count(self) -> int:
        return int(self.page.evaluate("Number(document.body.dataset.loaded || 0)"))

    def text(self, selector: str) -> str:
        return str(self.page.locator(selector).first.inner_text()).strip()

    def check(self) -> None:
        assert not self.errors, self.errors
        assert not self.dialogs, self.dialogs


@pytest.fixture
def tab(browser: Any, ledger: tuple[str, str, str]) -> Iterator[Page]:
    with dashboard(ledger[0]) as dash:
        page = Page(browser, dash.address)
        yield page
        page.check()
        page.page.close()


def window(ledger: tuple[str, str, str]) -> str:
    return f"since={ledger[1]}&until={ledger[2]}"


class TestWhatAPersonSees:
    def test_the_totals_are_the_reports(self, tab: Page, ledger: tuple[str, str, str], shots: Path) -> None:
        url, since, until = ledger
        tab.open(window(ledger))
        rows = report(url, since=since, until=until)
        total = totals(rows)
        assert tab.text("#w-cost") == cost_cell(total, "USD")
        assert tab.text("#w-requests") == str(total.requests) == str(CALLS_MADE)
        assert tab.text("#w-failed") == str(total.failed_requests)
        assert tab.text("#w-unpriced") == str(total.unpriced_requests)
        # The top models, in the report's order, each with the report's cost as its table shows it.
        names = tab.page.locator("#t-models tbody td.name").all_inner_texts()
        costs = tab.page.locator("#t-models tbody td.cost").all_inner_texts()
        assert names == [printable(r.keys[0]) for r in rows[:10]]
        assert costs == [cost_cell(r, "USD") or "unknown" for r in rows[:10]]
        tab.page.screenshot(path=str(shots / "overview.png"), full_page=True)

    def test_hostile_names_are_text(self, tab: Page, ledger: tuple[str, str, str]) -> None:
        """Names a server sent are shown as the report's table shows them: as text, escaped."""
        tab.open(window(ledger) + "&stack=model")
        names = tab.page.locator("#t-models tbody td.name").all_inner_texts()
        for name in [HOSTILE[0], HOSTILE[2], HOSTILE[4]]:
            row = tab.page.locator(f'#t-models tbody tr[data-value="{name}"]')
            assert row.count() == 1 or printable(name) not in names
        tab.page.goto(
            tab.base
            + "?"
            + window(ledger)
            + "&tag=team="
            + HOSTILE[0].replace("<", "%3C").replace(">", "%3E")
        )
        tab.loaded()
        shown = tab.page.locator("#t-models tbody td.name").all_inner_texts()
        assert set(shown) <= {printable(h) for h in HOSTILE}
        assert printable(HOSTILE[2]) in shown  # the escape sequence as \x1b, never sent raw
        assert tab.page.evaluate("document.querySelectorAll('script').length") == 2
        assert tab.page.locator("#chips .chip").inner_text().startswith("tag = team=<script>")


class TestRefusals:
    def test_a_refusal_is_listed_as_text(self, browser: Any, tmp_path: Path) -> None:
        """A scope that hit its limit, named by hostile text, is listed in the Budgets view, escaped."""
        import httpx2
        import openai

        import llmtally
        from llmtally.testing import FakeProvider, Reply

        url = f"sqlite:///{tmp_path / 'r.db'}"
        fake = FakeProvider(handler=lambda req: Reply(text="x", prompt_tokens=11, completion_tokens=13))
        client = openai.OpenAI(
            api_key="sk-test",
            base_url="http://fake/v1",
            max_retries=0,
            http_client=httpx2.Client(transport=fake.httpx2_transport()),
        )
        name = HOSTILE[0] + HOSTILE[2]
        llmtally.configure(ledger=url)
        with llmtally.track(name, max_requests=0), pytest.raises(llmtally.BudgetExceeded):
            client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
        assert llmtally.flush()
        llmtally.configure(ledger="none")
        with dashboard(url) as dash:
            tab = Page(browser, dash.address)
            tab.open("since=24h")
            cells = tab.page.locator("#t-refusals tbody td.name").all_inner_texts()
            assert cells[:2] == [printable(name), printable(name)]
            assert tab.text("#refusal-counts").startswith("1 refused, 0 sent")
            assert tab.page.evaluate("document.querySelectorAll('script').length") == 2
            tab.check()
            tab.page.close()


class TestFilterAndDrillDown:
    def test_a_filter_then_a_row_then_a_call(
        self, tab: Page, ledger: tuple[str, str, str], shots: Path
    ) -> None:
        url, since, until = ledger
        tab.open(window(ledger))
        n = tab.count()
        tab.page.fill("#f-model", "gpt-4o-mini")
        tab.page.click("#apply")
        tab.loaded(n)
        query = parse_qs(urlparse(tab.page.url).query)
        assert query["model"] == ["gpt-4o-mini"]  # in the address: bookmarkable
        want = report_json(url, "--since", since, "--until", until, "--where", "model=gpt-4o-mini")
        assert tab.text("#w-requests") == str(want["totals"]["requests"]) == "2"
        assert "gpt-4o-mini" in tab.text("#chips")
        assert "--where model=gpt-4o-mini" in tab.text("#command")
        assert "model=gpt-4o-mini" in str(tab.page.get_attribute("#export", "href"))
        # The same address, opened anew, is the same view.
        tab.page.reload()
        tab.loaded()
        assert tab.page.input_value("#f-model") == "gpt-4o-mini" and tab.text("#w-requests") == "2"

        n = tab.count()
        tab.page.click("#t-models tbody tr >> nth=0")
        tab.loaded(n)
        assert tab.page.is_visible("#calls-view")
        calls = tab.page.locator("#t-calls tbody tr.call")
        assert calls.count() == 2
        assert set(tab.page.locator("#t-calls tbody tr.call td.name").all_inner_texts()) >= {"gpt-4o-mini"}
        tab.page.screenshot(path=str(shots / "calls.png"), full_page=True)

        first_id = calls.first.get_attribute("data-id")
        n = tab.count()
        calls.first.click()
        tab.loaded(n)
        assert tab.text('#record dd[data-key="id"]') == first_id
        assert tab.text('#record dd[data-key="model"]') == "gpt-4o-mini"
        assert tab.text('#record dd[data-key="scope"]') == "search"
        tab.page.screenshot(path=str(shots / "call.png"), full_page=True)

    def test_a_bar(self, tab: Page, ledger: tuple[str, str, str]) -> None:
        """A click on a bar of the chart lists the calls of its hour and model."""
        url = ledger[0]
        tab.open(window(ledger))
        tab.page.wait_for_function("() => window.Chart && Chart.getChart('chart')")
        # The first dataset (the most expensive model): its tallest bar, where it is drawn.
        found = tab.page.evaluate(
            """() => {
              const chart = Chart.getChart('chart');
              const meta = chart.getDatasetMeta(0);
              const data = chart.data.datasets[0].data;
              const i = data.indexOf(Math.max(...data));
              const bar = meta.data[i];
              return {x: bar.x, y: (bar.y + bar.base) / 2, model: chart.data.datasets[0].filterValue,
                      label: chart.data.labels[i]};
            }"""
        )
        box = tab.page.locator("#chart").bounding_box()
        n = tab.count()
        tab.page.mouse.click(box["x"] + found["x"], box["y"] + found["y"])
        tab.loaded(n)
        assert tab.page.is_visible("#calls-view")
        query = parse_qs(urlparse(tab.page.url).query)
        assert query["model"] == [found["model"]]
        assert query["since"] == [found["label"].replace(" ", "T")]
        hour = report_json(
            url,
            "--since",
            query["since"][0],
            "--until",
            query["until"][0],
            "--where",
            f"model={found['model']}",
        )
        models = tab.page.locator("#t-calls tbody tr.call td.name").all_inner_texts()
        assert len(tab.page.locator("#t-calls tbody tr.call").all()) == hour["totals"]["requests"] > 0
        assert found["model"] in models


class TestLive:
    def test_a_new_call_appears(self, tab: Page, ledger: tuple[str, str, str], shots: Path) -> None:
        """A call made after the page loaded shows up without a reload."""
        url = ledger[0]
        tab.open("since=24h")
        assert tab.text("#w-requests") == str(CALLS_MADE)
        tab.page.evaluate("window.__same_page = true")
        record_calls(url, extra=1)
        # The page polls every two seconds; waiting here is for the page, not a measure of it.
        tab.page.wait_for_function(
            f"() => document.getElementById('w-requests').textContent === '{2 * CALLS_MADE + 1}'",
            timeout=60_000,
        )
        assert tab.page.evaluate("window.__same_page") is True  # no reload happened
        assert "gpt-4.1" in tab.page.locator("#t-models tbody td.name").all_inner_texts()
        tab.page.screenshot(path=str(shots / "live.png"), full_page=True)
