"""The extension points keep their shape: every registered task and strategy describes itself fully,
and no module outside a task's or strategy's own module asks for it by name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hftl.strategies import STRATEGIES
from hftl.tasks import TASKS, CardInfo, Task

PACKAGE = Path(__file__).resolve().parents[1] / "hftl"
# The few quoted names that are not branches: (file, quoted name) -> why.
ALLOWED = {
    ("config/schema.py", "full"): "the schema's default strategy",
    ("models/fusion_model.py", "fusion"): "the fusion task's own model module (config tag)",
    ("models/pooled_model.py", "text-classification"): "the text task's own model module (docstring)",
    **{
        ("analysis/advice_rules.py", name): "the advisor's ladder: the strategies it recommends"
        for name in ("feature_extraction", "partial", "full")
    },
}
MEMBERS = [name for name in dir(Task) if not name.startswith("_")] + list(Task.__annotations__)


@pytest.mark.parametrize("name", TASKS.names())
def test_every_task_implements_the_whole_protocol(name):
    task = TASKS.get(name)
    assert isinstance(task, Task)
    missing = [m for m in MEMBERS if not hasattr(task, m)]
    assert not missing, f"task {name} lacks {missing}"
    assert task.name == name and isinstance(task.card, CardInfo) and isinstance(task.towers, tuple)
    assert set(task.required_roles) <= set(task.roles)


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_strategy_describes_itself(name):
    spec = STRATEGIES.get(name)
    assert spec.name == name and spec.summary and not spec.summary.startswith(" ")
    assert spec.options is not None or not spec.options_required
    if spec.options is not None:  # its options are a recipe section: frozen, unknown keys refused
        assert spec.options.model_config.get("extra") == "forbid"


def test_no_module_branches_on_a_strategy_or_task_name():
    """A quoted strategy or task name may appear only in the module that registers it."""
    names = {*STRATEGIES.names(), *TASKS.names()}
    alternatives = "|".join(map(re.escape, sorted(names)))
    quoted = re.compile(rf"""(?<![\w.])["']({alternatives})["']""")
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        own = {m.group(1) for m in re.finditer(r"""(?:register|strategy)\(\s*["']([\w-]+)["']""", text)}
        for number, line in enumerate(text.splitlines(), 1):
            if line.lstrip().startswith("#"):
                continue
            hits = {m.group(1) for m in quoted.finditer(line)} - own
            hits = {h for h in hits if (path.relative_to(PACKAGE).as_posix(), h) not in ALLOWED}
            found += [f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}" for _ in hits]
    assert not found, "\n".join(found)
