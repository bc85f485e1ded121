"""The package's shape: the light commands stay light. (The layer contract itself is `lint-imports`,
run by `make lint`: pyproject.toml, [tool.importlinter].)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "datasets", "accelerate", "peft")

PROBE = """
import contextlib, io, json, sys
from hftl.cli import main
from hftl.config.shipped_recipes import RECIPES_DIR
out = io.StringIO()
codes = []
with contextlib.redirect_stdout(out):
    try:
        main(["--help"])
    except SystemExit as exc:
        codes.append(exc.code)
    for recipe in sorted(RECIPES_DIR.glob("*.yaml")):
        codes.append(main(["validate", str(recipe)]))
print(json.dumps({"codes": codes, "ok_lines": out.getvalue().count(": ok ("),
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in %r)}))
"""


def test_help_and_validate_import_no_ml_library():
    """`hftl --help` and `hftl validate` on every shipped recipe (tasks, strategies, shifts, target data and
    `auto` checked) answer without importing torch, transformers, datasets, accelerate or peft."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE % (HEAVY,)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    recipes = sorted((ROOT / "hftl" / "recipes").glob("*.yaml"))
    assert result["codes"] == [0] + [0] * len(recipes) and result["ok_lines"] == len(recipes)
    assert result["loaded"] == [], f"imported by --help / validate: {result['loaded']}"


TEXT_SUFFIXES = {".md", ".json", ".csv", ".yaml", ".yml", ".ipynb", ".txt", ".toml", ".cfg"}
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|home|tmp|root|Users|mnt)/")


def committed_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        return [ROOT / name for name in listed.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (e.g. an unpacked sdist)
        return [p for p in ROOT.rglob("*") if ".venv" not in p.parts and ".git" not in p.parts]


def test_no_committed_text_names_a_machine_folder():
    """Reports, data and docs name paths relative to the repository (a command there regenerates them),
    never the folders of the machine they were made on."""
    found = []
    for path in committed_files():
        if path.suffix not in TEXT_SUFFIXES or not path.is_file() or path.is_symlink():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if MACHINE_PATH.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not found, "absolute machine paths in committed files:\n" + "\n".join(found)
