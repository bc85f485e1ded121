"""hftl advise: LogME against hand-computed values, every branch of the decision table, the measurements on a
tiny random BERT, `strategy.name: auto` in a run, the written recipe, the feature cache it fills, --verify,
and clear errors for data it cannot advise on."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import yaml

from hftl.analysis import advice_rules
from hftl.analysis.advice_rules import (
    FE,
    FULL,
    LADDER,
    PARTIAL,
    RUNGS,
    SCRATCH,
    SETFIT,
    TABLE,
    Measurements,
    contenders,
    decide,
    neighbours,
    rung_settings,
)
from hftl.analysis.transferability import evidence_at, log_evidence, logme
from hftl.cli import main
from hftl.config.errors import RecipeError
from hftl.config.recipe import load_recipe


# --------------------------------------------------------------------------- LogME
def test_logme_matches_a_hand_computed_evidence():
    """F = [[1], [0]], y = [2, 1]: the marginal of y is N(0, diag(1/alpha + 1/beta, 1/beta)).

    At alpha = beta = 1: log N(y) = -(4/2 + 1/1)/2 - log(2 * 1)/2 - log(2 pi) = -3.6844; per example -1.8422.
    Maximised: 1/alpha + 1/beta = y1^2 = 4 and 1/beta = y2^2 = 1, so beta = 1, alpha = 1/3, and
    log N(y) = -(1 + 1)/2 - log(4)/2 - log(2 pi) = -3.5310; per example -1.7655.
    """
    f, y = np.array([[1.0], [0.0]]), np.array([2.0, 1.0])
    assert evidence_at(f, y, 1.0, 1.0) == pytest.approx((-1.5 - 0.5 * np.log(2) - np.log(2 * np.pi)) / 2, abs=1e-12)
    best = log_evidence(f, y)
    assert best.value == pytest.approx((-1.0 - 0.5 * np.log(4) - np.log(2 * np.pi)) / 2, abs=1e-6)
    assert best.alpha == pytest.approx(1 / 3, rel=1e-4) and best.beta == pytest.approx(1.0, rel=1e-4)


def test_logme_evidence_is_the_gaussian_marginal_and_its_maximum():
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(0)
    f = rng.normal(size=(30, 5))
    y = f @ rng.normal(size=5) + 0.5 * rng.normal(size=30)

    def direct(alpha, beta):
        return multivariate_normal(np.zeros(30), np.eye(30) / beta + f @ f.T / alpha).logpdf(y) / 30

    assert evidence_at(f, y, 0.7, 2.0) == pytest.approx(direct(0.7, 2.0), abs=1e-9)
    best = log_evidence(f, y)
    grid = max(direct(a, b) for a in np.geomspace(0.01, 100, 40) for b in np.geomspace(0.01, 100, 40))
    assert best.value >= grid - 1e-9 and best.value == pytest.approx(direct(best.alpha, best.beta), abs=1e-9)


def test_logme_ranks_informative_features_above_random_ones():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 300)
    informative = rng.normal(size=(3, 16))[labels] + rng.normal(size=(300, 16))
    noise = rng.normal(size=(300, 16))
    assert logme(informative, labels) > logme(noise, labels) + 0.05
    assert logme(informative, labels) > logme(informative, labels, shuffled_seed=0) + 0.05


# --------------------------------------------------------------------------- the decision table
# One constructed measurement per cell: (n_train, majority, probe, baseline)
CELLS = {
    ("small", "separable"): (500, 0.5, 0.97, 0.80),
    ("small", "ordinary"): (500, 0.566, 0.72, 0.70),
    ("small", "negative"): (500, 0.566, 0.62, 0.70),
    ("medium", "separable"): (4_000, 0.1, 0.95, None),
    ("medium", "ordinary"): (4_000, 0.566, 0.75, 0.74),
    ("medium", "negative"): (4_000, 0.566, 0.60, 0.70),
    ("large", "separable"): (20_000, 0.5, 0.99, 0.90),
    ("large", "ordinary"): (10_000, 0.566, 0.75, 0.76),
    ("large", "negative"): (10_000, 0.566, 0.70, 0.80),
}


def test_every_cell_of_the_table_has_a_constructed_case():
    assert set(CELLS) == set(TABLE)


@pytest.mark.parametrize("cell", list(CELLS), ids=lambda c: "-".join(c))
def test_each_branch_is_reached_by_its_measurements(cell):
    n, majority, probe, baseline = CELLS[cell]
    decision = decide(Measurements(n, majority, probe, baseline))
    assert (decision.size_band, decision.feature_class) == cell
    assert decision.rung.label == TABLE[cell].rung and decision.runner_up.label == TABLE[cell].runner_up
    assert decision.rung.label != decision.runner_up.label
    assert any("negative transfer" in f for f in decision.flags) == (cell[1] == "negative")


def test_the_measured_bbc_points_adapt_the_top_half_though_the_features_separate():
    """docs/studies/advisor_agreement.json, bbc-strategies at 400 / 1,000 / 1,779 articles (majority, probe, TF-IDF):
    the probe removes >= 90% of the errors, and the study's partial beats it by 2-3 validation points there."""
    for n, majority, probe, baseline in (
        (400, 0.263, 0.945, 0.770),
        (1_000, 0.234, 0.951, 0.907),
        (1_779, 0.229, 0.949, 0.926),
    ):
        decision = decide(Measurements(n, majority, probe, baseline, text=True, n_classes=5))
        assert decision.feature_class == "separable"
        assert (decision.rung.label, decision.runner_up.label) == (PARTIAL, SETFIT if n < 500 else FE)


def test_the_measured_sentiment_points_fall_where_the_measurements_say():
    """The advisor's own measurements of docs/studies/advisor_agreement.json (sentiment-strategies at 1,000 / 4,000 /
    10,207 snippets: majority, probe, TF-IDF): partial wherever the study's fine-tunes beat the probe; full at 10.2k."""
    assert decide(Measurements(1_000, 0.612, 0.677, 0.636)).rung.label == PARTIAL
    assert decide(Measurements(4_000, 0.578, 0.701, 0.652)).rung.label == PARTIAL
    assert decide(Measurements(10_207, 0.591, 0.679, 0.658)).rung.label == FULL


@pytest.mark.parametrize("n", [100, 768, 4_000, 20_000])
def test_negative_transfer_never_freezes(n):
    """Frozen features losing to raw inputs (issue 23: TF-IDF 0.736 > probe 0.701, 768 passages): adapt or restart."""
    decision = decide(Measurements(n, 0.52, 0.701, 0.736))
    assert decision.feature_class == "negative"
    assert decision.rung.label == FULL and decision.runner_up.label == SCRATCH, decision
    assert "freezing them cannot recover" in decision.why
    assert [r.label for r in contenders(decision)] == [FULL, PARTIAL, SCRATCH]  # what --verify runs
    assert FE not in {r.label for r in contenders(decision)}


@pytest.mark.parametrize("n", [100, 1_257, 20_000])
def test_constant_features_train_from_scratch_whatever_the_probe_says(n):
    """docs/studies/digits-screen: EfficientNet-Lite0 at 32 px, 99.6% of its pooled features constant over the digits;
    scratch won every size of digits-strategies. Read before the table and the few-shot rows, at any size."""
    for probe, baseline in ((0.36, 0.90), (0.62, 0.55)):  # negative, and (were it not constant) ordinary
        decision = decide(Measurements(n, 0.1, probe, baseline, n_classes=10, text=True, constant_share=0.995))
        assert decision.feature_class == "constant"
        assert (decision.rung.label, decision.runner_up.label) == (SCRATCH, FULL)
        assert any("99.5% of the frozen features are constant" in f for f in decision.flags), decision.flags
    # below the threshold (64 px: 37% constant, full fine-tuning 0.96) the table decides as before
    assert decide(Measurements(n, 0.1, 0.36, 0.90, constant_share=0.37)).feature_class == "negative"


def test_constant_share_counts_the_dimensions_that_never_change():
    from hftl.analysis.advise.baselines import constant_share

    rng = np.random.default_rng(0)
    x = np.zeros((64, 10), dtype=np.float32)
    x[:, :3] = rng.normal(size=(64, 3))  # 3 live dimensions, 7 dead (ReLU6 at 0)
    x[:, 3] = 6.0  # a saturated one is constant too
    assert constant_share(x) == pytest.approx(0.7)
    assert constant_share(rng.normal(size=(64, 10))) == 0.0


def test_ladder_neighbours_and_settings_are_valid_recipes(text_recipe):
    path = text_recipe()
    assert [r.label for r in neighbours(FE)] == [PARTIAL] and [r.label for r in neighbours(PARTIAL)] == [FE, FULL]
    from hftl.strategies import STRATEGIES

    for r in RUNGS:
        assert r.strategy in STRATEGIES
        sets = rung_settings(r, 1_000, 32, images=False, pooling="pooler")
        from hftl.config.recipe import to_yaml_text

        recipe = load_recipe(path, [f"{k}={to_yaml_text(v)}" for k, v in sets.items()])
        assert recipe.strategy.name == r.strategy and recipe.optim.head_lr == sets["optim.head_lr"]
        assert recipe.model.pretrained == (r.label != SCRATCH)
    assert rung_settings(LADDER[-1], 100, 32, False, None)["train.epochs"] == 10  # capped
    assert rung_settings(LADDER[-1], 20_000, 32, False, None)["train.epochs"] == 1  # 625 steps >= 300


# --------------------------------------------------------------------------- measuring on a tiny model
@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HFTL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_advise_measures_prints_and_writes_a_recipe_that_reuses_the_features(
    text_recipe, tmp_path, cache, capsys, monkeypatch
):
    # the tiny random BERT's features lose to TF-IDF on the toy reviews ("negative": never frozen); without that
    # branch, and with a table whose small band freezes, the written recipe reuses the features the advisor cached
    monkeypatch.setattr(advice_rules, "NEGATIVE_GAP", 1.0)
    for column in ("ordinary", "separable"):
        monkeypatch.setitem(advice_rules.TABLE, ("small", column), advice_rules.Cell(FE, "partial", "a probe"))
    out = tmp_path / "advised.yaml"
    assert main(["advise", str(text_recipe()), "--write", str(out)]) == 0
    printed = capsys.readouterr().out
    for part in (
        "examples: train",
        "per class in train",
        "LogME",
        "linear probe accuracy",
        "TF-IDF",
        "step time",
        "branch: small x",
        "runner-up:",
        "estimated training time",
        "strategy.name: ",
    ):
        assert part in printed, part
    written = load_recipe(out)
    assert written.strategy.name == FE and written.optim.head_lr == 1e-2  # 384 examples: the small band
    # the advisor stored the whole (small) training split's features under the run's own cache key
    from hftl.training.train import run

    run(load_recipe(out, ["train.max_steps=2", "train.eval_steps=2"]))
    assert "[cache] train: reused features" in capsys.readouterr().out


def test_larger_bands_are_reached_from_a_dataset_with_patched_thresholds(text_recipe, cache, monkeypatch):
    from hftl.analysis.advise import advise

    monkeypatch.setattr(advice_rules, "FEW_EXAMPLES", 100)
    monkeypatch.setattr(advice_rules, "MANY_EXAMPLES", 300)
    advice = advise(load_recipe(text_recipe()), step_times=False)
    assert advice.decision.size_band == "large" and advice.data["n_train"] > 300
    assert advice.decision.rung.label == TABLE[("large", advice.decision.feature_class)].rung
    f = advice.features
    assert 0.0 <= f["probe_cv_accuracy"] <= 1.0 and f["baseline_cv_accuracy"] > 0.9  # the word decides the label
    assert f["logme"] > f["logme_shuffled"]


def test_strategy_auto_is_resolved_at_the_start_of_the_run_and_recorded(text_recipe, cache, capsys):
    from hftl import run_recipe
    from hftl.config.run_folder import read_json

    result = run_recipe(load_recipe(text_recipe(strategy={"name": "auto"}, train={"max_steps": 3, "eval_steps": 3})))
    assert "[advise] strategy.name: auto ->" in capsys.readouterr().out
    plan = read_json(result.run_dir, "plan.json")
    advice = plan["options"]["advice"]
    assert plan["strategy"] == advice["strategy"] and advice["branch"].startswith("small x")
    assert {"probe_cv_accuracy", "baseline_cv_accuracy", "logme", "n_train"} <= set(advice["measurements"])
    saved = load_recipe(result.run_dir / "recipe.yaml")  # the resolved recipe reloads (resume works)
    assert saved.strategy.name == advice["strategy"]
    assert "Chosen by `hftl advise`" in (result.run_dir / "README.md").read_text()


def test_plan_resolves_auto_as_the_run_would(text_recipe, cache, capsys):
    assert main(["plan", str(text_recipe(strategy={"name": "auto"}))]) == 0
    out = capsys.readouterr().out
    assert "[advise] strategy.name: auto ->" in out and "strategy: " in out


def test_auto_refuses_strategy_options(text_recipe):
    with pytest.raises(RecipeError, match="strategy.partial.*does not go with strategy.name: auto"):
        load_recipe(text_recipe(strategy={"name": "auto", "partial": {"freeze_groups": 1}}))


def test_verify_runs_the_recommended_strategy_against_its_neighbours(text_recipe, tmp_path, cache, capsys):
    out = tmp_path / "advised.yaml"
    code = main(["advise", str(text_recipe()), "--write", str(out), "--verify", "--verify-steps", "2"])
    printed = capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "advised-verify" / "verify-study" / "results.csv")))
    # the tiny random BERT loses to TF-IDF on the toy reviews: full fine-tuning, checked against partial and scratch
    assert "branch: small x negative" in printed, printed
    assert {r["strategy"] for r in rows} == {FULL, PARTIAL, SCRATCH} and all(r["state"] == "COMPLETE" for r in rows)
    assert yaml.safe_load(out.read_text())["strategy"]["name"] == "full"
    scratch = [r for r in rows if r["strategy"] == SCRATCH][0]
    trial_recipe = load_recipe(tmp_path / "advised-verify" / "verify-study" / scratch["dir"] / "recipe.yaml")
    assert trial_recipe.model.pretrained is False and trial_recipe.strategy.name == "full"
    # the verdict is chosen on validation; test is printed beside it, never compared
    assert "chosen on validation.accuracy, test.accuracy reported beside" in printed, printed
    means = {
        s: float(next(r for r in rows if r["strategy"] == s)["validation.accuracy"]) for s in (FULL, PARTIAL, SCRATCH)
    }
    block = printed.split("== verify", 1)[1].splitlines()
    [best_line] = [line for line in block if "(best on validation)" in line]
    assert means[best_line.split()[0]] == max(means.values()), (best_line, means)
    # One seed, so no standard error: the advice holds (exit 0) exactly when the recommended strategy scores at
    # least as well as the best; otherwise hftl says so and exits 1.
    held = means[FULL] >= max(means.values())
    assert code == (0 if held else 1), (means, printed)
    assert ("advice held" in printed) == held and ("advice did NOT hold" in printed) == (not held)


# --------------------------------------------------------------------------- data it cannot advise on
def write_csv(path, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


BAD_DATA = {  # rows of the CSV, and what the error says
    "one-class": ([{"text": f"good movie {i}", "label": "pos"} for i in range(60)], "needs at least 2"),
    "empty": ([], "no rows"),
    "too-few-to-fold": (
        [
            {"text": w, "label": "pos" if i % 2 else "neg"}
            for i, w in enumerate(["bad", "good", "dull", "fine", "poor", "great"])
        ],
        "too few examples",
    ),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_exits_2_with_one_clear_message(case, text_recipe, tmp_path, cache, capsys):
    rows, message = BAD_DATA[case]
    data = write_csv(tmp_path / f"{case}.csv", rows)
    recipe = text_recipe(
        data={"source": str(data), "group_column": None, "max_length": 16, "validation_size": 0.2, "test_size": 0.2}
        if case != "too-few-to-fold"
        else {
            "source": str(data),
            "group_column": None,
            "max_length": 16,
            "splits": {"test": None},
            "validation_size": 0.3,
        }
    )
    assert main(["advise", str(recipe)]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the datasets progress bars
    assert last.startswith("hftl: error: ") and "Traceback" not in err and message in last, err


def test_advice_record_is_json(text_recipe, cache):
    from hftl.analysis.advise import advise

    advice = advise(load_recipe(text_recipe()), step_times=False)
    assert json.loads(json.dumps(advice.record()))["strategy"] == advice.decision.rung.label
    assert yaml.safe_load(yaml.safe_dump(advice.record()))["branch"] == advice.decision.branch
    # what the table read is kept, and deciding from it again gives the same answer (benchmarks/advisor_agreement.py
    # caches it as JSON and decides again with the table of the day)
    kept = json.loads(json.dumps(dataclasses.asdict(advice.measurements)))
    assert advice_rules.decide(advice_rules.Measurements(**kept)) == advice.decision
    assert kept["n_train"] == advice.data["n_train"] and kept["text"] is True


# --------------------------------------------------------------------------- images and token tags
from test_image_classification import checkpoints, image_recipe, stripes_dir  # noqa: E402,F401  (fixtures)
from test_token_classification import ner_bert_dir, ner_jsonl, recipe_for  # noqa: E402,F401  (fixtures)


def test_images_get_sizes_a_pixel_baseline_and_an_uncached_augmentation_free_probe(image_recipe, cache):
    from hftl.analysis.advise import advise, format_advice

    advice = advise(load_recipe(image_recipe("resnet", data={"max_train_samples": 60})))
    assert advice.data["image_sizes"]["checked"] == 60 and "20x20" in advice.data["image_sizes"]["common"]
    assert advice.features["baseline"].startswith("pooled raw pixels") and advice.features["baseline_cv_accuracy"] > 0.5
    fe = rung_settings(LADDER[0], 60, 8, images=True, pooling=None)
    assert fe["data.augment"] == {"random_resized_crop": False, "hflip": False}
    assert advice.estimates["step_seconds_full"] > 0 and "image sizes" in format_advice(advice)
    assert 0.0 <= advice.features["constant_share"] < 0.9 and advice.measurements.constant_share is not None


def test_step_times_train_what_each_rung_trains(text_recipe, cache, monkeypatch):
    """The model is built on the probe's rung (body frozen): the full step must still time every weight, the partial
    step the top half and the head (a head-only timing made full fine-tuning look 4-5x cheaper)."""
    from hftl.analysis.advise import advise
    from hftl.strategies import plan as plan_module

    shares: dict[str, list[float]] = {}
    real_apply = plan_module.apply_plan

    def spy(model, plan, step):
        real_apply(model, plan, step)
        sizes = [(p.numel(), p.requires_grad) for p in model.parameters()]
        share = sum(n for n, trains in sizes if trains) / sum(n for n, _ in sizes)
        shares.setdefault(plan.strategy, []).append(share)

    monkeypatch.setattr(plan_module, "apply_plan", spy)
    advise(load_recipe(text_recipe()))
    assert shares["full"] and all(share == 1.0 for share in shares["full"]), shares
    assert shares["partial"] and all(0.1 < share < 1.0 for share in shares["partial"]), shares


def test_the_timed_step_is_a_batch_of_about_the_median_length():
    """Training batches are length-grouped: the timed batch is the rows around the median length, not the first rows
    padded to their longest (which made the sentiment estimate run high)."""
    import datasets

    from hftl.analysis.advise.measure import typical_batch

    lengths = [50, 3, 40, 7, 20, 21, 19, 60, 22, 18]
    rows = typical_batch(datasets.Dataset.from_dict({"length": lengths}), 4)
    assert sorted(lengths[i] for i in rows) == [19, 20, 21, 22]
    assert typical_batch(datasets.Dataset.from_dict({"length": lengths}), 32) == list(range(10))
    assert typical_batch(datasets.Dataset.from_dict({"pixels": list(range(10))}), 4) == [0, 1, 2, 3]


def test_token_tags_are_counted_per_entity_and_probed_per_token(ner_bert_dir, ner_jsonl, tmp_path, cache):
    from hftl.analysis.advise import advise

    advice = advise(recipe_for(ner_bert_dir, ner_jsonl, tmp_path), step_times=False)
    assert advice.data["per_class_unit"] == "entities" and set(advice.data["per_class"]) == {"PER", "LOC", "ORG"}
    assert advice.features["rows"] > advice.data["n_train"]  # one row per labelled token
    assert advice.features["baseline"].startswith("token identity") and advice.features["baseline_cv_accuracy"] > 0.9


def test_few_shot_text_is_advised_setfit(text_recipe, cache):
    """data.shots (16 per class) puts the measured toy reviews on the few-shot rows; the whole split does not."""
    from hftl.analysis.advice_rules import FEW_SHOT_TABLE, SETFIT
    from hftl.analysis.advise import advise

    few = advise(load_recipe(text_recipe(data={"shots": 16})), step_times=False)
    assert few.data["n_train"] == 32 and few.decision.size_band == "few-shot"
    assert few.decision.rung.label == FEW_SHOT_TABLE[few.decision.feature_class].rung
    assert SETFIT in (few.decision.rung.label, few.decision.runner_up.label)
    assert advise(load_recipe(text_recipe()), step_times=False).decision.size_band == "small"  # 192 per class
