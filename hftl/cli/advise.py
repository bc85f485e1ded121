"""``hftl advise``: print the measurements and the advice; optionally write the recipe and verify it."""

from __future__ import annotations

from pathlib import Path

from hftl.analysis.advice_verify import verify
from hftl.analysis.advise import SAMPLE, advise, format_advice, recommended_recipe
from hftl.config import log


def run_advise(
    recipe_file: str,
    overrides: list[str],
    write: str | None = None,
    verify_study: bool = False,
    seeds: int = 1,
    verify_steps: int | None = None,
    sample: int = SAMPLE,
) -> int:
    """``hftl advise``: print the measurements and advice; optionally write the recipe and verify it."""
    import yaml

    from hftl.config.recipe import load_recipe

    recipe = load_recipe(recipe_file, overrides)
    advice = advise(recipe, sample=sample)
    log.say(format_advice(advice))
    if write:
        doc = recommended_recipe(recipe_file, overrides, advice)
        header = (
            f"# {Path(recipe_file).name} with the strategy recommended by `hftl advise` "
            f"(branch {advice.decision.branch}: {advice.decision.why})\n"
        )
        Path(write).write_text(header + yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        log.say(f"[advise] wrote {write}")
    if verify_study:
        folder = Path(write).with_suffix("") if write else recipe.run_dir.with_name(recipe.name + "-advice")
        held, text = verify(recipe_file, overrides, advice, Path(str(folder) + "-verify"), seeds, verify_steps)
        *details, verdict = text.splitlines()
        log.say("\n".join(details))
        log.summary(verdict.strip())
        return 0 if held else 1
    d = advice.decision
    log.summary(f"[advise] recommended strategy: {d.rung.label} (branch {d.branch})")
    return 0
