"""Only a folder for ``sitecustomize.py``; see ``llmtally._run``."""
