"""The stdlib-only core: usage, calls and totals (``usage``), money, the pending-call pipeline and
scopes. Every other layer builds on it; it imports nothing else of llmtally."""
