"""Run code snippets (a model card's "How to use" blocks), each in its own fresh process, cheaply.

``python tests/snippet_runner.py SNIPPETS.json RESULTS.json``: SNIPPETS maps a name to Python source. This process
imports torch and transformers' ``pipeline`` (what every snippet imports first, and most of a fresh interpreter's
start-up: about 6 s each on a 2-core machine) and nothing of hftl; then each snippet runs in a child forked from
it, two at a time: a process of its own with its own globals, where ``import hftl`` and everything the snippet
uses beyond those two packages happens as written. RESULTS maps each name to its exit status, stdout and stderr.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

PARALLEL = 2


def run_child(name: str, code: str, out: Path) -> None:
    """In the forked child: stdout and stderr to files, run the snippet as ``__main__``, exit 0 or 1."""
    for fd, suffix in ((1, "stdout"), (2, "stderr")):
        target = os.open(out / f"{name}.{suffix}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    status = 0
    try:
        exec(compile(code, f"<{name} snippet>", "exec"), {"__name__": "__main__"})  # noqa: S102 - the card's code
    except SystemExit as exit_:  # as a fresh interpreter would end
        status = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    except BaseException:  # noqa: BLE001 - report every failure as a failed snippet
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def main(snippets_file: str, results_file: str) -> int:
    snippets: dict[str, str] = json.loads(Path(snippets_file).read_text())
    out = Path(results_file).parent / "snippet-output"
    out.mkdir(exist_ok=True)
    import torch  # noqa: F401
    from transformers import pipeline  # noqa: F401

    assert not any(m == "hftl" or m.startswith("hftl.") for m in sys.modules), "hftl imported before the snippets"
    running: dict[int, str] = {}
    status: dict[str, int] = {}
    queue = list(snippets.items())
    while queue or running:
        while queue and len(running) < PARALLEL:
            name, code = queue.pop(0)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                run_child(name, code, out)
            running[pid] = name
        pid, wait_status = os.wait()
        status[running.pop(pid)] = os.waitstatus_to_exitcode(wait_status)
    results = {
        name: {
            "returncode": status[name],
            "stdout": (out / f"{name}.stdout").read_text(),
            "stderr": (out / f"{name}.stderr").read_text(),
        }
        for name in snippets
    }
    Path(results_file).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
