"""Loaded by every Python process that ``llmtally run`` starts (its folder leads PYTHONPATH).

It turns metering on before the program's own code runs, then hands over to the
``sitecustomize`` this one shadows, if there is one, so the program behaves as it would have.
"""

import importlib.util
import os
import sys


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        if not entry or os.path.abspath(entry) == here:
            continue
        candidate = os.path.join(entry, "sitecustomize.py")
        if os.path.isfile(candidate):
            spec = importlib.util.spec_from_file_location("_llmtally_next_sitecustomize", candidate)
            if spec is not None and spec.loader is not None:
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            return


try:
    from llmtally.cli.run import start_in_child

    start_in_child()
except Exception as exc:  # metering must never stop the program from starting
    sys.stderr.write(f"llmtally: could not start metering: {exc}\n")
_chain()
