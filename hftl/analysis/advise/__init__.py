"""``hftl advise``: measure the data and the checkpoint, then recommend a strategy from one table.

What is measured, on the recipe's own data and checkpoint, in about a minute on 2 cores:

- the data: examples per split, per class (per entity type for BIO tags), class balance,
  token lengths (and the share cut at ``data.max_length``) or image sizes;
- the frozen checkpoint: the model is built as a ``feature_extraction`` run would build it, the
  head's input is extracted with :func:`hftl.training.feature_extraction.extract` on a seeded sub-sample of the
  training split (at most ``SAMPLE`` examples) and stored in the feature cache under the key the
  run uses (so a following probe run on the same rows reuses it); on it, LogME
  (:mod:`hftl.analysis.transferability`, also with shuffled labels as the no-information reference) and a
  3-fold linear probe (:func:`hftl.models.probe.fit_logistic`);
- a no-transfer baseline on the same folds: TF-IDF + logistic regression for text (on the texts
  as tokenized, so the same truncation), pooled raw pixels + logistic regression for images, token
  identity + logistic regression for token tags (scikit-learn);
- the step time of the body (forward + backward of one training batch) with everything training and
  with the bottom half frozen, which with the step counts gives each strategy's training time.

The decision is :func:`hftl.analysis.advice_rules.decide` (the table lives there). ``strategy.name: auto``
in a recipe runs the same measurements without the step times (:func:`resolve_strategy`, called at
where a recipe is loaded for a run); ``--verify`` runs a small study of the recommended strategy against
its neighbours on the ladder (:mod:`hftl.analysis.advice_verify`, beside this package: it runs a study,
and a study's trials resolve ``auto`` here). The command itself is :mod:`hftl.cli.advise`.

Modules: :mod:`.measure` and :mod:`.baselines` (what is measured), :mod:`hftl.analysis.advice_rules`
(the table), :mod:`.decide` (the recipe it gives), :mod:`.report` (what is printed).
"""

from __future__ import annotations

from hftl.analysis.advise.decide import recommended_recipe, resolve_strategy
from hftl.analysis.advise.measure import SAMPLE, Advice, advise
from hftl.analysis.advise.report import format_advice

__all__ = ["SAMPLE", "Advice", "advise", "format_advice", "recommended_recipe", "resolve_strategy"]
