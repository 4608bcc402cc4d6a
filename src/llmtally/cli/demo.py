"""``llmtally demo``: the three scenarios of LangChain's "Tracking token usage" notebook, offline.

The real openai SDK and LangChain talk over loopback HTTP to llmtally's fake provider, which
answers like the OpenAI API with the token counts of the notebook's runs. Nothing here is
special-cased for the demo: the calls are metered by the same HTTP hook as any real call.
"""

from __future__ import annotations

import ast
import operator
import sys
from typing import Any, TextIO

__all__ = ["AGENT_STEPS", "QUESTION", "calculator", "run_demo", "search"]

QUESTION = "Who is Olivia Wilde's boyfriend? What is his current age raised to the 0.23 power?"

# The agent's four LLM steps: (tool to call and its argument, or the final answer; tokens).
# They total 1,799 prompt and 130 completion tokens, the notebook's gpt-4 run.
AGENT_STEPS: list[tuple[str, str, str, int, int]] = [
    ("search", "Olivia Wilde's current boyfriend", "", 385, 22),
    (
        "search",
        "Harry Styles current age",
        "Olivia Wilde's current boyfriend is Harry Styles. Let me find out his age for you.",
        430,
        38,
    ),
    ("calculator", "29 ** 0.23", "", 462, 30),
    (
        "",
        "",
        "Harry Styles' current age (29 years) raised to the 0.23 power is approximately 2.17.",
        522,
        40,
    ),
]

_SEARCH_RESULTS = {
    "olivia": "Olivia Wilde has been dating Harry Styles since January 2021.",
    "harry styles": "29 years",
}

_OPS: dict[type, Any] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.BitXor: operator.pow,  # "29 ^ 0.23", as people type it
    ast.USub: operator.neg,
}


def search(query: str) -> str:
    """Search the web (canned, offline results)."""
    q = query.lower()
    for key, answer in _SEARCH_RESULTS.items():
        if key in q:
            return answer
    return "No results."


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as '29 ** 0.23'."""

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return float(_OPS[type(node.op)](ev(node.left), ev(node.right)))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return float(_OPS[type(node.op)](ev(node.operand)))
        raise ValueError(f"not arithmetic: {ast.dump(node)}")

    return str(ev(ast.parse(expression, mode="eval").body))


def _agent_replies() -> list[Any]:
    from ..testing import Reply, ToolCall

    replies = []
    for tool, arg, text, prompt, completion in AGENT_STEPS:
        key = "query" if tool == "search" else "expression"
        calls = [ToolCall(tool, {key: arg})] if tool else None
        replies.append(
            Reply(
                text=text,
                tool_calls=calls,
                prompt_tokens=prompt,
                completion_tokens=completion,
                model="gpt-4-0613",
            )
        )
    return replies


def run_demo(out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        from langchain.agents import create_agent
        from langchain_core.tools import tool
        from langchain_openai import ChatOpenAI
        from pydantic import SecretStr
    except ImportError as exc:
        print(f"llmtally demo needs LangChain and the openai SDK ({exc}).", file=sys.stderr)
        print('Install them with: pip install "llmtally[demo]"', file=sys.stderr)
        return 2

    import llmtally
    from llmtally.testing import FakeProvider, Reply

    def say(text: str = "") -> None:
        print(text, file=out)

    say("llmtally demo: the three scenarios of LangChain's 'Tracking token usage' notebook.")
    say("The provider is SIMULATED: llmtally.testing.FakeProvider answers like the OpenAI API over")
    say("loopback HTTP, with the notebook's token counts. The real openai SDK and LangChain make the")
    say("calls; llmtally meters them at the HTTP client exactly as it meters real ones.")
    say("With a real provider: set OPENAI_API_KEY and drop base_url; nothing else changes.")
    say()

    fake = FakeProvider()
    with fake.serve() as url:
        llm = ChatOpenAI(
            model="gpt-4", base_url=url + "/v1", api_key=SecretStr("sk-demo-not-a-real-key"), max_retries=0
        )

        def joke(text: str) -> Reply:
            # The notebook's gpt-4 joke: 11 prompt and 13 completion tokens.
            return Reply(text=text, prompt_tokens=11, completion_tokens=13, model="gpt-4-0613")

        say("1. One call                  with get_openai_callback() as cb: llm.invoke('Tell me a joke')")
        fake.add(joke("Why don't scientists trust atoms? They make up everything."))
        with llmtally.get_openai_callback() as cb:
            llm.invoke("Tell me a joke")
        say(_indent(str(cb)))
        say()

        say("2. Two sequential calls      print(cb.total_tokens)")
        fake.add_many(joke("Why did the scarecrow win an award? He was outstanding in his field."), 2)
        with llmtally.get_openai_callback() as cb:
            llm.invoke("Tell me a joke")
            llm.invoke("Tell me a joke")
        say(_indent(str(cb.total_tokens)))
        say()

        say("3. An agent with a search tool and a calculator tool (langchain.agents.create_agent)")
        say(f"   Q: {QUESTION}")
        fake.extend(_agent_replies())
        agent = create_agent(llm, [tool(search), tool(calculator)])
        with llmtally.get_openai_callback() as cb:
            result = agent.invoke({"messages": [{"role": "user", "content": QUESTION}]})
        for message in result["messages"][1:]:
            for call in getattr(message, "tool_calls", None) or []:
                say(f"   Invoking: `{call['name']}` with `{next(iter(call['args'].values()))}`")
            if message.type == "tool":
                say(f"   -> {message.content}")
        say(f"   A: {result['messages'][-1].content}")
        say(f"   Total Tokens: {cb.total_tokens}")
        say(f"   Prompt Tokens: {cb.prompt_tokens}")
        say(f"   Completion Tokens: {cb.completion_tokens}")
        say(f"   Total Cost (USD): ${cb.cost}")
        say()
        say(_indent(str(cb)))
        say()
    say(f"The fake provider answered {len(fake.requests)} requests.")
    say("Next: `with llmtally.track('my-job') as t:` around any openai / anthropic / LangChain code.")
    return 0


def _indent(text: str) -> str:
    return "\n".join("   " + line for line in text.splitlines())
