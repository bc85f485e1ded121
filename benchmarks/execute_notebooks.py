"""Execute the notebooks in place with their real settings, so that GitHub and the Hub show their numbers and plots.

    make notebooks                                          # every notebooks/*.ipynb, one at a time
    python benchmarks/execute_notebooks.py 01_sentiment_quickstart 03_ner   # some of them

Each notebook runs top to bottom in a fresh kernel started in ``notebooks/`` (its relative paths hold there),
offline and with the libraries' progress bars and warnings off. The outputs are then cleaned: carriage-return
progress lines are dropped, consecutive stream outputs merged, no timing metadata is kept, and a notebook over
``MAX_BYTES`` is refused. The notebook records a digest of its code cells (``metadata.hftl.code_digest``):
``tests/test_notebooks.py`` checks it against the committed cells, and runs :func:`execute` with
``HFTL_NOTEBOOK_SMOKE=1`` (tiny settings) to compare the structure of its outputs with the committed ones.
A notebook whose execution fails is left as it was (the error names the cell).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
MAX_BYTES = 1_000_000  # renders on GitHub (its viewer gives up on large notebooks)
COMMAND = "make notebooks"  # what regenerates them; recorded in each notebook's metadata
# The kernel's environment on top of the caller's: offline (as the Makefile), no progress bars or library chatter
# in the outputs. PYTHONWARNINGS reaches the kernel and the hftl commands it starts: a warning's text names the
# machine's site-packages folder, which a committed file must not.
KERNEL_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TQDM_DISABLE": "1",
    "PYTHONWARNINGS": "ignore",
}
# A tqdm line: "... 12/63 [00:04<00:17, 2.9it/s]" or "... 2225 examples [00:00, 3e5 examples/s]" (hftl's own bar
# passes `disable=` itself, so TQDM_DISABLE does not reach it).
PROGRESS_LINE = re.compile(r"\[\d+:\d\d(?::\d\d)?(?:<(?:\d+:\d\d(?::\d\d)?|\?))?, [^\]]*\]\s*$")


def code_digest(notebook: Any) -> str:
    """sha256 of the code cells' sources, in order: what the committed outputs were computed from."""
    sources = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    return hashlib.sha256(json.dumps(sources).encode("utf-8")).hexdigest()


def clean_text(text: str) -> str:
    """A stream's text without progress bars: each line as its last carriage return left it, tqdm lines dropped."""
    lines = (line.rsplit("\r", 1)[-1] for line in text.split("\n"))
    return "\n".join(line for line in lines if not PROGRESS_LINE.search(line))


def relative_paths(text: str) -> str:
    """The repository's folder written as seen from notebooks/ (where the kernel runs): no machine paths committed."""
    return text.replace(str(ROOT) + "/", "../").replace(str(ROOT), "..")


def clean_outputs(notebook: Any) -> Any:
    """Drop progress-bar noise and timing metadata, write repository paths relative to notebooks/, and merge
    consecutive stream outputs of the same name (in place)."""
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
        kept: list[Any] = []
        for output in cell.outputs:
            for kind in ("text/plain", "text/markdown", "text/html"):
                if kind in output.get("data", {}):
                    output.data[kind] = relative_paths(output.data[kind])
            if output.output_type == "stream":
                text = clean_text(relative_paths(output.text))
                if kept and kept[-1].output_type == "stream" and kept[-1].name == output.name:
                    kept[-1].text = clean_text(kept[-1].text + text)
                    continue
                if not text.strip():
                    continue
                output.text = text
            kept.append(output)
        cell.outputs = kept
    return notebook


def execute(path: Path, smoke: bool = False, runs: Path | None = None, timeout: int = 1800) -> Any:
    """``path`` executed top to bottom in a fresh kernel (cleaned, digest recorded); the file is not written.

    ``smoke``: the notebook's tiny settings (HFTL_NOTEBOOK_SMOKE=1), as the test suite runs it. ``runs``: where its
    run folders go (HFTL_NOTEBOOK_RUNS; default the notebook's own choice, ../runs). Raises on a cell's error.
    """
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    env = {**os.environ, **KERNEL_ENV, "HFTL_NOTEBOOK_SMOKE": "1" if smoke else "0"}
    if runs is not None:
        env["HFTL_NOTEBOOK_RUNS"] = str(runs)
    else:
        env.pop("HFTL_NOTEBOOK_RUNS", None)
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute(env=env)  # raises CellExecutionError, naming the cell, on any error
    clean_outputs(notebook)
    notebook.metadata["hftl"] = {"code_digest": code_digest(notebook), "regenerate": COMMAND}
    return notebook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebook names (stem or file name); default: all of notebooks/")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds a cell may run (default 1800)")
    args = parser.parse_args(argv)
    every = sorted(NOTEBOOKS.glob("*.ipynb"))
    chosen = [p for p in every if not args.names or p.stem in args.names or p.name in args.names]
    unknown = sorted(set(args.names) - {p.stem for p in chosen} - {p.name for p in chosen})
    if unknown:
        print(f"execute_notebooks: no notebook {', '.join(unknown)} in notebooks/; there are: "
              f"{', '.join(p.stem for p in every)}.", file=sys.stderr)  # fmt: skip
        return 2
    from nbclient.exceptions import CellExecutionError

    for path in chosen:
        start = time.monotonic()
        print(f"[notebooks] {path.name}: executing", flush=True)
        try:
            notebook = execute(path, timeout=args.timeout)
        except CellExecutionError as exc:
            print(f"[notebooks] {path.name}: FAILED, left unchanged:\n{exc}", file=sys.stderr)
            return 1
        text = nbformat.writes(notebook) + "\n"
        if len(text.encode("utf-8")) > MAX_BYTES:
            print(f"[notebooks] {path.name}: {len(text.encode()):,} bytes, over {MAX_BYTES:,}; left unchanged "
                  "(show fewer or smaller plots).", file=sys.stderr)  # fmt: skip
            return 1
        path.write_text(text, encoding="utf-8")
        print(f"[notebooks] {path.name}: {time.monotonic() - start:.0f} s, {len(text.encode()):,} bytes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
