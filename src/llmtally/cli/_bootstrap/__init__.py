"""Only a folder for ``sitecustomize.py``; see ``llmtally.cli.run``."""
