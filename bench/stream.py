"""Long streams: a chat completion of 10,000 and 100,000 chunks, tracked vs untracked.

``FakeProvider`` answers ``Reply(chunks=N)`` with N content chunks (plus role, finish and usage
chunks and ``[DONE]``) over the in-memory httpx2 transport; the openai SDK sends the request with
``stream=True, stream_options={"include_usage": True}``. Two ways of reading the stream:

* ``sdk-raw``: ``client.chat.completions.with_streaming_response.create(...)`` and ``iter_bytes()``,
  the SDK without its per-chunk pydantic models (~10 us a chunk here), so llmtally's per-chunk
  cost is measured against a light baseline;
* ``sdk-parsed``: iterating the SDK's ``Stream[ChatCompletionChunk]`` (~100-200 us a chunk here,
  nearly all of it the SDK building models).

Time: two streams are opened, one sent inside ``track()`` and one outside, and read in lockstep,
chunk by chunk, each ``next()`` timed on this thread's CPU clock; the added time per chunk is
(tracked total - untracked total) / N for each repetition, with medians and spreads over
repetitions (the untracked one reads first on even repetitions, second on odd ones).

Memory (sdk-raw, one stream at a time): RSS before, peak during (VmHWM, reset before the run
through /proc/self/clear_refs) and after a plain run; then, in a run under tracemalloc (slower),
the traced peak of the whole run and the memory held at the last chunk by objects allocated in
llmtally's own code (src/llmtally, not its testing package). Flat means: the same at 10,000 and
100,000 chunks.

Bedrock (``boto3-converse``): the same for an AWS event stream, ``converse_stream`` of boto3's
``bedrock-runtime`` client (botocore over urllib3), ``Reply(chunks=N)`` giving N ``contentBlockDelta``
events (plus ``messageStart``, ``contentBlockStop``, ``messageStop`` and ``metadata``, which carries
the usage). ``FakeProvider`` serves it over loopback HTTP from a child process (``_fake.py``), one
HTTP chunk per event; each ``next()`` on the two ``EventStream``s is timed in lockstep as above.
Memory as above; what llmtally holds (allocated by its own code) and the whole traced memory,
tracked minus untracked (which also counts what botocore's parser allocates for llmtally's
event-stream decoder), are taken at the last event (``metadata``, the usage) and at the one before
it (``messageStop``: all the text read, no usage yet).

    python bench/stream.py [--raw 10000,100000] [--parsed 10000] [--memory 10000,100000] [--reps 3]
                           [--bedrock 10000,100000] [--bedrock-memory 10000,100000] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import os
import sys
import time
import tracemalloc
from typing import Any

import _common as C

MESSAGES = [{"role": "user", "content": "Tell me a long story"}]


def rss_kb(field: str = "VmRSS") -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Bench:
    def __init__(self) -> None:
        import httpx2
        import openai

        import llmtally
        from llmtally.testing import FakeProvider, Reply

        self.llmtally = llmtally
        self.Reply = Reply
        self.reply: Any = None
        self.fake = FakeProvider(handler=lambda request: self.reply)
        http = httpx2.Client(transport=self.fake.httpx2_transport())
        self.sdk = openai.OpenAI(
            base_url="http://fake/v1", api_key="sk-bench", http_client=http, max_retries=0
        )
        src = os.path.dirname(os.path.abspath(llmtally.__file__))
        self.ours = src + os.sep
        self.testing = os.path.join(src, "testing") + os.sep

    def prepare(self, n: int) -> None:
        # ~5 characters a chunk; usage says n completion tokens.
        self.reply = self.Reply(
            text="word " * n, chunks=n, prompt_tokens=11, completion_tokens=n, model="gpt-4"
        )
        self.fake.requests.clear()

    def create(self, **kw: Any) -> Any:
        return dict(
            model="gpt-4", messages=MESSAGES, stream=True, stream_options={"include_usage": True}, **kw
        )

    def read_raw(self, at_last: Any = None) -> int:
        chunks = 0
        with self.sdk.chat.completions.with_streaming_response.create(**self.create()) as response:
            for chunk in response.iter_bytes():
                chunks += 1
                if at_last is not None and b"[DONE]" in chunk:
                    at_last()
        return chunks

    def read_parsed(self) -> int:
        chunks = 0
        usage = None
        for chunk in self.sdk.chat.completions.create(**self.create()):
            chunks += 1
            usage = chunk.usage or usage
        assert usage is not None and usage.completion_tokens == self.reply.completion_tokens
        return chunks

    def one(self, mode: str, n: int, tracked: bool, at_last: Any = None) -> tuple[float, int]:
        """(CPU seconds, chunks) of one read; a tracked read must count the usage exactly."""
        read = self.read_raw if mode == "sdk-raw" else self.read_parsed
        t0 = time.thread_time()
        if tracked:
            with self.llmtally.track() as tally:
                chunks = read(at_last) if at_last is not None else read()
        else:
            chunks = read(at_last) if at_last is not None else read()
        elapsed = time.thread_time() - t0
        if tracked and (tally.completion_tokens, tally.prompt_tokens, tally.successful_requests) != (
            n,
            11,
            1,
        ):
            raise SystemExit(f"llmtally counted {tally!r} for a {n}-chunk stream")
        return elapsed, chunks

    def ours_held(self) -> int:
        """Bytes still allocated by llmtally's own code (not its testing package), now."""
        snap = tracemalloc.take_snapshot()
        total = 0
        for stat in snap.statistics("filename"):
            name = stat.traceback[0].filename
            if name.startswith(self.ours) and not name.startswith(self.testing):
                total += stat.size
        return total


def lockstep(pair: list[tuple[str, Any]]) -> dict[str, list[int]]:
    """Read the two iterators in turn, one ``next()`` each, until one ends; each read's CPU ns."""
    clock = time.thread_time_ns
    times: dict[str, list[int]] = {name: [] for name, _ in pair}
    live = True
    while live:
        for name, it in pair:
            t0 = clock()
            try:
                next(it)
            except StopIteration:
                live = False
            times[name].append(clock() - t0)
    return times


def timing(b: Bench, mode: str, n: int, reps: int) -> dict[str, Any]:
    """Two streams, one sent inside ``track()`` and one outside, read chunk by chunk in alternation.

    The scope is captured when the request is sent; the metering happens as the caller reads, so
    reading both streams in lockstep puts every tracked chunk next to an untracked one in time: on
    a noisy machine that is the only way to resolve a few microseconds on a ~10-300 us chunk.
    """
    b.prepare(n)
    totals: dict[str, list[float]] = {"untracked": [], "tracked": []}
    medians: dict[str, list[float]] = {"untracked": [], "tracked": []}
    chunks = 0
    for rep in range(reps):
        gc.collect()
        with contextlib.ExitStack() as stack:
            if mode == "sdk-raw":

                def open_stream() -> Any:
                    resp = stack.enter_context(
                        b.sdk.chat.completions.with_streaming_response.create(**b.create())
                    )
                    return iter(resp.iter_bytes())
            else:

                def open_stream() -> Any:
                    return iter(b.sdk.chat.completions.create(**b.create()))

            with b.llmtally.track() as tally:
                tracked = open_stream()
            untracked = open_stream()
            pair = [("untracked", untracked), ("tracked", tracked)]
            if rep % 2:
                pair.reverse()
            times = lockstep(pair)
        if (tally.completion_tokens, tally.prompt_tokens, tally.successful_requests) != (n, 11, 1):
            raise SystemExit(f"llmtally counted {tally!r} for a {n}-chunk stream")
        chunks = len(times["tracked"]) - 1
        for name in totals:
            totals[name].append(sum(times[name]) / 1e9)
            medians[name].append(C.median(times[name]) / 1000.0)
    return timing_result(mode, n, chunks, reps, totals, medians)


def timing_result(
    mode: str,
    n: int,
    chunks: int,
    reps: int,
    totals: dict[str, list[float]],
    medians: dict[str, list[float]],
) -> dict[str, Any]:
    """Per chunk (or event): the untracked read and what tracking added, over repetitions."""
    added_us = [(t - u) / n * 1e6 for t, u in zip(totals["tracked"], totals["untracked"], strict=False)]
    base_us = [u / n * 1e6 for u in totals["untracked"]]
    pct = [100 * a / u for a, u in zip(added_us, base_us, strict=False)]
    return {
        "mode": mode,
        "chunks_requested": n,
        "chunks_read": chunks,
        "reps": reps,
        "untracked_s": C.summary(totals["untracked"]),
        "tracked_s": C.summary(totals["tracked"]),
        "untracked_us_per_chunk": C.summary(base_us),
        "added_us_per_chunk": C.summary(added_us),
        "added_pct": C.summary(pct),
        "median_chunk_us": {k: C.summary(v) for k, v in medians.items()},
    }


def memory(b: Bench, n: int) -> dict[str, Any]:
    """RSS (plain runs), then tracemalloc (traced runs), untracked and tracked, one stream at a time."""
    b.prepare(n)
    res: dict[str, Any] = {"chunks_requested": n}
    for variant in ("untracked", "tracked"):
        gc.collect()
        before = rss_kb()
        reset_peak_rss()
        b.one("sdk-raw", n, variant == "tracked")
        peak, after = rss_kb("VmHWM"), rss_kb()
        gc.collect()
        held: list[int] = []
        tracemalloc.start()
        tracemalloc.reset_peak()
        b.one("sdk-raw", n, variant == "tracked", at_last=lambda held=held: held.append(b.ours_held()))
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        res[variant] = {
            "rss_before_kb": before,
            "rss_peak_growth_kb": peak - before if peak and before else None,
            "rss_after_growth_kb": after - before if after and before else None,
            "traced_peak_kb": traced_peak / 1024,
            "llmtally_held_at_last_chunk_kb": held[0] / 1024 if held else None,
        }
    res["peak_difference_kb"] = res["tracked"]["traced_peak_kb"] - res["untracked"]["traced_peak_kb"]
    return res


# -- Bedrock: an AWS event stream through boto3 ------------------------------------------------------

BEDROCK_MODEL = "amazon.nova-pro-v1:0"


class BedrockBench:
    """boto3's ``bedrock-runtime`` client, ``converse_stream`` against the fake in a child process."""

    def __init__(self, url: str) -> None:
        import boto3
        from botocore.config import Config

        import llmtally

        self.llmtally = llmtally
        self.client = boto3.client(
            "bedrock-runtime",
            region_name="us-east-1",
            endpoint_url=url,
            aws_access_key_id="AKIAFAKEFAKEFAKE",
            aws_secret_access_key="not-a-secret",
            config=Config(retries={"total_max_attempts": 1}),
        )
        src = os.path.dirname(os.path.abspath(llmtally.__file__))
        self.ours = src + os.sep
        self.testing = os.path.join(src, "testing") + os.sep

    def open(self, n: int) -> Any:
        """The stream of a reply of ``n`` content deltas (``_fake.py`` reads "<n> chunks")."""
        messages = [{"role": "user", "content": [{"text": f"Tell me a long story in {n} chunks"}]}]
        return self.client.converse_stream(modelId=BEDROCK_MODEL, messages=messages)["stream"]

    def check(self, tally: Any, n: int) -> None:
        got = (tally.completion_tokens, tally.prompt_tokens, tally.successful_requests, tally.failed_requests)
        if got != (n, 11, 1, 0):
            raise SystemExit(f"llmtally counted {tally!r} for a {n}-event Bedrock stream")

    def one(self, n: int, tracked: bool, at_event: Any = None) -> tuple[float, int]:
        """(CPU seconds, events) of one read; ``at_event(event)`` is called on each event if given."""
        t0 = time.thread_time()
        with self.llmtally.track() if tracked else contextlib.nullcontext() as tally:
            events = 0
            for event in self.open(n):
                events += 1
                if at_event is not None:
                    at_event(event)
        elapsed = time.thread_time() - t0
        if tracked:
            self.check(tally, n)
        elif events != n + 4:
            raise SystemExit(f"read {events} events of a {n}-delta Bedrock stream, expected {n + 4}")
        return elapsed, events

    def held(self) -> int:
        """Bytes allocated now by llmtally's own code (not its testing package), as ``Bench.ours_held``."""
        snap = tracemalloc.take_snapshot()
        total = 0
        for stat in snap.statistics("filename"):
            name = stat.traceback[0].filename
            if name.startswith(self.ours) and not name.startswith(self.testing):
                total += stat.size
        return total


def bedrock_timing(bb: BedrockBench, n: int, reps: int) -> dict[str, Any]:
    """As ``timing``: a tracked and an untracked ``converse_stream`` read event by event in lockstep."""
    totals: dict[str, list[float]] = {"untracked": [], "tracked": []}
    medians: dict[str, list[float]] = {"untracked": [], "tracked": []}
    events = 0
    for rep in range(reps):
        gc.collect()
        with bb.llmtally.track() as tally:
            tracked = iter(bb.open(n))
        untracked = iter(bb.open(n))
        pair = [("untracked", untracked), ("tracked", tracked)]
        if rep % 2:
            pair.reverse()
        times = lockstep(pair)
        for _ in untracked:  # lockstep stops when the first of the two ends: finish both
            pass
        for _ in tracked:
            pass
        bb.check(tally, n)
        events = len(times["tracked"]) - 1
        for name in totals:
            totals[name].append(sum(times[name]) / 1e9)
            medians[name].append(C.median(times[name]) / 1000.0)
    return timing_result("boto3-converse", n, events, reps, totals, medians)


def bedrock_memory(bb: BedrockBench, n: int) -> dict[str, Any]:
    """As ``memory``, for ``converse_stream``; what llmtally holds is taken at ``messageStop`` (all
    the text read, no usage yet) and at the last event, ``metadata``."""
    res: dict[str, Any] = {"mode": "boto3-converse", "chunks_requested": n}
    for variant in ("untracked", "tracked"):
        gc.collect()
        before = rss_kb()
        reset_peak_rss()
        bb.one(n, variant == "tracked")
        peak, after = rss_kb("VmHWM"), rss_kb()
        gc.collect()
        held: dict[str, tuple[int, int]] = {}

        def at_event(event: dict[str, Any], held: dict[str, tuple[int, int]] = held) -> None:
            for name in ("messageStop", "metadata"):
                if name in event:
                    held[name] = (bb.held(), tracemalloc.get_traced_memory()[0])

        tracemalloc.start()
        tracemalloc.reset_peak()
        bb.one(n, variant == "tracked", at_event=at_event)
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        last, before_usage = held.get("metadata", (0, 0)), held.get("messageStop", (0, 0))
        res[variant] = {
            "rss_before_kb": before,
            "rss_peak_growth_kb": peak - before if peak and before else None,
            "rss_after_growth_kb": after - before if after and before else None,
            "traced_peak_kb": traced_peak / 1024,
            "llmtally_held_at_last_chunk_kb": last[0] / 1024,
            "llmtally_held_before_usage_kb": before_usage[0] / 1024,
            "traced_at_last_event_kb": last[1] / 1024,
            "traced_before_usage_kb": before_usage[1] / 1024,
        }
    res["peak_difference_kb"] = res["tracked"]["traced_peak_kb"] - res["untracked"]["traced_peak_kb"]
    for key in ("traced_at_last_event_kb", "traced_before_usage_kb"):
        res[key.replace("traced", "difference")] = res["tracked"][key] - res["untracked"][key]
    return res


def run(
    raw: list[int], parsed: list[int], reps: int, mem: list[int], bedrock: list[int], bedrock_mem: list[int]
) -> dict[str, Any]:
    b = Bench()
    # Warm up both paths (imports, catalogue, plans).
    b.prepare(50)
    for mode in ("sdk-raw", "sdk-parsed"):
        for tracked in (False, True):
            b.one(mode, 50, tracked)
    started = time.perf_counter()
    times = [timing(b, "sdk-raw", n, reps) for n in raw]
    times += [timing(b, "sdk-parsed", n, 1 if n >= 50_000 else max(1, reps - 1)) for n in parsed]
    mems = [memory(b, n) for n in mem]
    bedrock_mems: list[dict[str, Any]] = []
    skipped = None
    if bedrock or bedrock_mem:
        if importlib.util.find_spec("boto3") is None:
            skipped = "boto3 is not installed: no Bedrock streams"
        else:
            from _fake import FakeServer

            with FakeServer() as fake:
                bb = BedrockBench(fake.url)
                for tracked in (False, True):
                    bb.one(50, tracked)
                times += [bedrock_timing(bb, n, reps) for n in bedrock]
                bedrock_mems = [bedrock_memory(bb, n) for n in bedrock_mem]
                bb.client.close()
    elapsed = time.perf_counter() - started
    return {
        "benchmark": "stream",
        "machine": C.machine(),
        "versions": C.versions("llmtally", "openai", "httpx2", "boto3", "botocore", "urllib3"),
        "seconds": round(elapsed, 1),
        "clock": "thread CPU time",
        "timing": times,
        "memory": mems,
        "bedrock_memory": bedrock_mems,
        "skipped": skipped,
    }


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
    rows = []
    for t in res["timing"]:
        u, a, p = t["untracked_us_per_chunk"], t["added_us_per_chunk"], t["added_pct"]
        mc = t["median_chunk_us"]
        rows.append(
            [
                t["mode"],
                f"{t['chunks_requested']:,}",
                t["reps"],
                f"{u['median']:.1f}",
                f"{a['median']:+.2f} [{a['p25']:+.2f}..{a['p75']:+.2f}]",
                f"{p['median']:+.1f}%",
                f"{mc['untracked']['median']:.1f} / {mc['tracked']['median']:.1f}",
            ]
        )
    mrows = []
    for mm in res["memory"]:
        u, t = mm["untracked"], mm["tracked"]
        mrows.append(
            [
                f"{mm['chunks_requested']:,}",
                f"{u['traced_peak_kb']:.0f} / {t['traced_peak_kb']:.0f}",
                f"{mm['peak_difference_kb']:+.1f}",
                f"{u['llmtally_held_at_last_chunk_kb']:.1f} / {t['llmtally_held_at_last_chunk_kb']:.1f}",
                f"{(u['rss_peak_growth_kb'] or 0) / 1024:.1f} / {(t['rss_peak_growth_kb'] or 0) / 1024:.1f}",
                f"{(u['rss_after_growth_kb'] or 0) / 1024:.1f} / {(t['rss_after_growth_kb'] or 0) / 1024:.1f}",
            ]
        )
    return "\n".join(
        [
            f"stream: {res['seconds']} s; CPU time of this thread; tracked and untracked streams read in lockstep; "
            f"Python {m['python']}, {m['cores']} cores, load {m['loadavg']}",
            "",
            C.table(
                [
                    "read",
                    "chunks",
                    "reps",
                    "untracked us/chunk",
                    "added us/chunk [p25..p75]",
                    "added",
                    "median chunk us u/t",
                ],
                rows,
            ),
            "",
            "memory, one sdk-raw stream at a time (u = untracked, t = tracked):",
            C.table(
                [
                    "chunks",
                    "tracemalloc peak KB u/t",
                    "difference KB",
                    "llmtally-held KB at last chunk u/t",
                    "peak RSS growth MB u/t",
                    "RSS after-before MB u/t",
                ],
                mrows,
            ),
            *bedrock_lines(res),
        ]
    )


def bedrock_lines(res: dict[str, Any]) -> list[str]:
    if res.get("skipped"):
        return ["", res["skipped"]]
    if not res.get("bedrock_memory"):
        return []
    rows = []
    for mm in res["bedrock_memory"]:
        u, t = mm["untracked"], mm["tracked"]
        rows.append(
            [
                f"{mm['chunks_requested']:,}",
                f"{u['traced_peak_kb']:.0f} / {t['traced_peak_kb']:.0f}",
                f"{mm['peak_difference_kb']:+.1f}",
                f"{t['llmtally_held_before_usage_kb']:.1f} / {mm['difference_before_usage_kb']:+.1f}",
                f"{t['llmtally_held_at_last_chunk_kb']:.1f} / {mm['difference_at_last_event_kb']:+.1f}",
                f"{(u['rss_peak_growth_kb'] or 0) / 1024:.1f} / {(t['rss_peak_growth_kb'] or 0) / 1024:.1f}",
            ]
        )
    return [
        "",
        "memory, one boto3 converse_stream at a time (u = untracked, t = tracked; held = allocated by",
        "llmtally's code, and all traced memory tracked - untracked, at messageStop and at metadata):",
        C.table(
            [
                "events",
                "tracemalloc peak KB u/t",
                "peak difference KB",
                "held KB at messageStop / t-u",
                "held KB at last event / t-u",
                "peak RSS growth MB u/t",
            ],
            rows,
        ),
    ]


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--raw", default="10000,100000", help="chunk counts read raw through the SDK")
    ap.add_argument(
        "--parsed", default="10000", help="chunk counts read as SDK chunk objects (100000: ~1 min more)"
    )
    ap.add_argument("--memory", default="10000,100000", help="chunk counts measured under tracemalloc")
    ap.add_argument(
        "--reps",
        type=int,
        default=3,
        help="tracked/untracked pairs per size (parsed: reps-1; 100k parsed: 1)",
    )
    ap.add_argument(
        "--bedrock", default="10000,100000", help="content events of boto3 converse_stream streams timed"
    )
    ap.add_argument(
        "--bedrock-memory", default="10000,100000", help="content events measured under tracemalloc"
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = run(
        ints(args.raw),
        ints(args.parsed),
        args.reps,
        ints(args.memory),
        ints(args.bedrock),
        ints(args.bedrock_memory),
    )
    C.emit(res, render(res), args.json)


if __name__ == "__main__":
    sys.exit(main())
