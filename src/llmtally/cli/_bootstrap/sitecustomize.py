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


def _not_installed() -> None:
    """This interpreter has no llmtally: say so, with the fix, and pass the run on to any process it
    starts (one with llmtally is metered as part of the run)."""
    import json

    spec = os.environ.pop("LLMTALLY_RUN", None)
    inherited = os.environ.get("LLMTALLY_RUN_CHILD")
    try:
        settings = json.loads(spec or inherited or "{}")
    except ValueError:
        settings = {}
    if not isinstance(settings, dict):
        settings = {}
    if spec:
        settings["top"] = os.getpid()
        os.environ["LLMTALLY_RUN_CHILD"] = json.dumps(settings)
    other = settings.get("python")
    sys.stderr.write(
        f"llmtally: metering cannot start in {sys.executable}: llmtally is not installed in this "
        f"interpreter. Install it there ({sys.executable} -m pip install llmtally), or run the program "
        f"with the interpreter that has it{f' ({other})' if other else ''}.\n"
    )


try:
    from llmtally.cli.run import start_in_child
except ImportError as exc:
    if (exc.name or "").split(".")[0] == "llmtally":
        _not_installed()
    else:
        sys.stderr.write(f"llmtally: could not start metering: {exc}\n")
else:
    try:
        start_in_child()
    except Exception as exc:  # metering must never stop the program from starting
        sys.stderr.write(f"llmtally: could not start metering: {exc}\n")
_chain()
