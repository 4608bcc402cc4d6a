"""End-to-end tests: the real SDKs over real loopback HTTP."""
