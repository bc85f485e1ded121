"""``hftl advise``: measure the data and the checkpoint, then recommend a strategy from one table.

What is measured, on the recipe's own data and checkpoint, in about a minute on 2 cores:

- the data: examples per split, per class (per entity type for BIO tags), class balance,
  token lengths (and the share cut at ``data.max_length``) or image sizes;
- the frozen checkpoint: the model is built as a ``feature_extraction`` run would build it, the
  head's input is extracted with :func:`hftl.training.feature_cache.extract` on a seeded sub-sample of the
  training split (at most ``SAMPLE`` examples) and stored in the feature cache under the key the
  run uses (so a following probe run on the same rows reuses it); on it, LogME
  (:mod:`hftl.analysis.transferability`, also with shuffled labels as the no-information reference) and a
  3-fold linear probe (:func:`hftl.training.probe.fit_logistic`);
- a no-transfer baseline on the same folds: TF-IDF + logistic regression for text (on the texts
  as tokenized, so the same truncation), pooled raw pixels + logistic regression for images, token
  identity + logistic regression for token tags (scikit-learn);
- the step time of the body (forward + backward of one training batch) with everything training and
  with the bottom half frozen, which with the step counts gives each strategy's training time.

The decision is :func:`hftl.analysis.advice_rules.decide` (the table lives there). ``strategy.name: auto``
in a recipe runs the same measurements without the step times (:func:`resolve_strategy`, called at
the start of ``hftl run`` and ``hftl plan``); ``--verify`` runs a small study of the recommended
strategy against its neighbours on the ladder (:func:`verify`).

Modules: :mod:`.measure` and :mod:`.baselines` (what is measured), :mod:`hftl.analysis.advice_rules`
(the table), :mod:`.decide` (the recipe it gives), :mod:`.report` (what is printed), :mod:`.verify`.
"""

from __future__ import annotations

from pathlib import Path

from hftl.analysis.advise.decide import recommended_recipe, resolve_strategy
from hftl.analysis.advise.measure import SAMPLE, Advice, advise
from hftl.analysis.advise.report import format_advice
from hftl.analysis.advise.verify import verify

__all__ = ["Advice", "advise", "format_advice", "recommended_recipe", "resolve_strategy", "run_advise", "verify"]


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
    print(format_advice(advice))
    if write:
        doc = recommended_recipe(recipe_file, overrides, advice)
        header = (
            f"# {Path(recipe_file).name} with the strategy recommended by `hftl advise` "
            f"(branch {advice.decision.branch}: {advice.decision.why})\n"
        )
        Path(write).write_text(header + yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        print(f"[advise] wrote {write}")
    if verify_study:
        folder = Path(write).with_suffix("") if write else recipe.run_dir.with_name(recipe.name + "-advice")
        held, text = verify(recipe_file, overrides, advice, Path(str(folder) + "-verify"), seeds, verify_steps)
        print(text)
        return 0 if held else 1
    return 0
