"""The extension points keep their shape: every registered task and strategy describes itself fully,
and no module outside a task's or strategy's own module asks for it by name.

The name check reads the package's syntax trees (not its text), so it sees a name however it is spelled:
a string literal or a constant holding one (or a tuple / list / set of them), a constant imported from
another module, a comparison of an attribute with either, and a hint text that names a strategy or task.
"""

from __future__ import annotations

import ast
import functools
import importlib
import re
from pathlib import Path

import pytest

from hftl.strategies import STRATEGIES
from hftl.tasks import TASKS, CardInfo, Task

PACKAGE = Path(__file__).resolve().parents[1] / "hftl"
NAMES = frozenset({*STRATEGIES.names(), *TASKS.names()})
# Each name's own module: where its registration lives (found from the registry, not from the text).
OWN = {
    **{n: STRATEGIES.get(n).start_steps.__module__ for n in STRATEGIES.names()},
    **{n: type(TASKS.get(n)).__module__ for n in TASKS.names()},
}
TODO_19 = "TODO(issue 19): the advisor names its ladder; the advise rewrite should take it from the registry"
# The few names outside their own module that are not branches: (file, name) -> why.
ALLOWED = {
    ("config/schema.py", "full"): "the schema's default strategy (a field default, not a branch)",
    ("models/fusion_model.py", "fusion"): "the fusion task's own model module (tag in its saved config)",
    **{("analysis/advice_rules.py", n): TODO_19 for n in ("feature_extraction", "partial", "full", "setfit")},
    **{("analysis/advise/measure.py", n): TODO_19 for n in ("feature_extraction", "partial", "full")},
}
MEMBERS = [name for name in dir(Task) if not name.startswith("_")] + list(Task.__annotations__)

_ALTERNATIVES = "|".join(map(re.escape, sorted(NAMES, key=len, reverse=True)))
# In a longer text: a name that is no ordinary word (feature_extraction, text-classification) anywhere, and
# any name where the text sets or names a strategy or task ("strategy.name: full", "the fusion task").
_DISTINCT = "|".join(re.escape(n) for n in sorted(NAMES, key=len, reverse=True) if not n.isalpha())
_IN_TEXT = re.compile(
    rf"(?<![\w.-])({_DISTINCT})(?![\w-])"
    rf"|(?:strategy\.name|strategy|task)\s*[:=]?\s*['\"`]?({_ALTERNATIVES})(?![\w-])"
    rf"|\bthe ({_ALTERNATIVES}) (?:task|strategy)\b"
)


def names_in(value: object) -> set[str]:
    """The strategy / task names a runtime value is: a name, or a tuple / list / set of names."""
    if isinstance(value, str):
        return {value} & NAMES
    if isinstance(value, (tuple, list, set, frozenset)) and value and all(isinstance(v, str) for v in value):
        return set(value) & NAMES if set(value) <= NAMES else set()
    return set()


def docstrings(tree: ast.AST) -> set[int]:
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, kinds) and node.body and isinstance(node.body[0], ast.Expr)
        if isinstance(node.body[0].value, ast.Constant)
    }


def module_name(path: Path) -> str | None:
    """The dotted name of an importable package module (not a script, not an evaluate metric folder)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] in ("__main__", "run") or not all(
        (PACKAGE.parent.joinpath(*parts[:i]) / "__init__.py").is_file() for i in range(1, len(parts))
    ):
        return None
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


COLLECTIONS = {"str", "tuple", "list", "set", "frozenset", "sorted"}


@functools.cache
def constant_names(module: str | None) -> dict[str, set[str]]:
    """The module-level constants of ``module`` that hold strategy / task names, e.g. ``FE = "feature_extraction"``.

    Literal values are read from the source; a module is imported only for a constant computed otherwise
    (``FE, PARTIAL, FULL = (r.label for r in LADDER)``), so the check stays fast. A call of anything but a
    collection builder (a registry, a logger) is taken to hold no names.
    """
    base = PACKAGE.parent / (module or "").replace(".", "/")
    path = next((p for p in (base.with_suffix(".py"), base / "__init__.py") if module and p.is_file()), None)
    if path is None:  # not a module of the package (or `from hftl.x import name` where name is no module)
        return {}
    found: dict[str, set[str]] = {}
    computed: list[str] = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if value is not None else []
        for target in targets:
            names = [e.id for e in target.elts] if isinstance(target, ast.Tuple) else [getattr(target, "id", "")]
            if not all(n.isupper() for n in names):
                continue
            try:
                literal = ast.literal_eval(value)
            except ValueError:
                call = isinstance(value, ast.Call)
                if not call or getattr(value.func, "id", None) in COLLECTIONS:
                    computed += names
                continue
            values = literal if isinstance(target, ast.Tuple) else [literal]
            found |= {n: held for n, v in zip(names, values) if (held := names_in(v))}
    if computed:
        loaded = vars(importlib.import_module(module))
        found |= {n: held for n in computed if (held := names_in(loaded.get(n)))}
    return found


def name_uses(source: str, module: str | None, constants_of=constant_names) -> list[tuple[int, set[str], str]]:
    """(line, names, what) for every place a module's ``source`` names a strategy or task."""
    tree = ast.parse(source)
    skip, found = docstrings(tree), []
    constants = constants_of(module)  # defined here or imported at the top: both are the module's own globals
    modules = {}  # local name -> hftl module, for attribute access such as advice_rules.FE
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {(a.asname or a.name): a.name for a in node.names if a.name.startswith("hftl")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hftl"):
            modules |= {(a.asname or a.name): f"{node.module}.{a.name}" for a in node.names}
            for alias in node.names:
                if imported := constants_of(node.module).get(alias.name):
                    found.append((node.lineno, imported, f"imported constant {alias.name}"))
                    constants[alias.asname or alias.name] = imported  # also when imported inside a function
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            if node.value in NAMES:
                found.append((node.lineno, {node.value}, f"literal {node.value!r}"))
            elif hits := {n for m in _IN_TEXT.finditer(node.value) for n in m.groups() if n}:
                found.append((node.lineno, hits, f"text {node.value[:60]!r}"))
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in constants:
            found.append((node.lineno, constants[node.id], f"constant {node.id}"))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            if held := constants_of(modules[node.value.id]).get(node.attr):
                found.append((node.lineno, held, f"constant {node.value.id}.{node.attr}"))
    return found


def package_modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), module_name(path), path.read_text(encoding="utf-8")


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


def test_no_module_names_a_strategy_or_task_outside_its_own_module():
    """Names as literals, constants (imported or not), collections of them, or in hint texts: only at home."""
    found = []
    for where, module, source in package_modules():
        for line, names, what in name_uses(source, module):
            foreign = {n for n in names if OWN[n] != module and (where, n) not in ALLOWED}
            if foreign:
                found.append(f"hftl/{where}:{line}: {what} names {sorted(foreign)}")
    assert not found, "\n".join(sorted(set(found)))


SAMPLE = '''
"""Docstrings may name full and feature_extraction: they explain, they do not branch."""
from hftl.analysis import rules
from hftl.analysis.rules import LADDER
FE, PARTIAL = "feature_extraction", "partial"
STAGED = ("two_stage", "progressive")
def pick(recipe):
    if recipe.strategy.name in STAGED or recipe.strategy.name == FE or recipe.task == rules.FUSION:
        return "hint: set strategy.name: lora"
    return "the full model" if LADDER else "the fusion task"
'''
SAMPLE_CONSTANTS = {  # what importing the sample's modules would give
    "sample": {"FE": {"feature_extraction"}, "PARTIAL": {"partial"}, "STAGED": {"two_stage", "progressive"}},
    "hftl.analysis.rules": {"LADDER": {"full", "partial"}, "FUSION": {"fusion"}},
}


def test_the_name_check_sees_literals_constants_collections_and_hint_texts():
    """The check on a small module written to break every rule once ("the full model" and the docstring
    break none: an ordinary word, and an explanation)."""
    uses = name_uses(SAMPLE, "sample", lambda m: SAMPLE_CONSTANTS.get(m, {}))
    assert sorted((line, sorted(names), what.split()[0]) for line, names, what in uses) == [
        (4, ["full", "partial"], "imported"),
        (5, ["feature_extraction"], "literal"),
        (5, ["partial"], "literal"),
        (6, ["progressive"], "literal"),
        (6, ["two_stage"], "literal"),
        (8, ["feature_extraction"], "constant"),
        (8, ["fusion"], "constant"),
        (8, ["progressive", "two_stage"], "constant"),
        (9, ["lora"], "text"),
        (10, ["full", "partial"], "constant"),
        (10, ["fusion"], "text"),
    ]


def test_the_allow_list_has_no_stale_entries():
    """Every allowed (file, name) still occurs there: a fixed module leaves the list."""
    modules = {where: (module, source) for where, module, source in package_modules()}
    for where, name in ALLOWED:
        uses = name_uses(modules[where][1], modules[where][0])
        assert any(name in names for _, names, _ in uses), f"hftl/{where} no longer names {name!r}: drop it"
