"""Token classification (NER): sub-word alignment, bad input, entity metrics, training + pipeline reload."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from hftl.config.errors import DataError
from hftl.config.recipe import load_recipe, validate_recipe
from hftl.tasks import TASKS
from hftl.tasks.token_classification import IGNORE, align_labels, continuation_ids

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG"]
VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "john",
    "mary",
    "smith",
    "lives",
    "in",
    "works",
    "at",
    "visits",
    "paris",
    "ber",
    "##lin",
    "london",
    "new",
    "york",
    "acme",
    "google",
    "today",
    ".",
]
PEOPLE = [["john"], ["mary"], ["john", "smith"], ["mary", "smith"]]
PLACES = [["paris"], ["berlin"], ["london"], ["new", "york"]]
ORGS = [["acme"], ["google"]]


def task():
    return TASKS.get("token-classification")


def span(words: list[str], kind: str) -> list[str]:
    return [("B-" if i == 0 else "I-") + kind for i in range(len(words))]


def make_sentences(n: int, seed: int = 0) -> list[dict]:
    """'<person> lives in|visits <place> [today] .' or '<person> works at <org> .': tags follow from the words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        person = rng.choice(PEOPLE)
        if rng.random() < 0.7:
            verb, target, kind = rng.choice([["lives", "in"], ["visits"]]), rng.choice(PLACES), "LOC"
        else:
            verb, target, kind = ["works", "at"], rng.choice(ORGS), "ORG"
        tail = ["today"] if rng.random() < 0.3 else []
        tokens = [*person, *verb, *target, *tail, "."]
        tags = [*span(person, "PER"), *["O"] * len(verb), *span(target, kind), *["O"] * len(tail), "O"]
        rows.append({"tokens": tokens, "ner_tags": tags})
    return rows


@pytest.fixture(scope="session")
def ner_bert_dir(tmp_path_factory) -> Path:
    """A random 2-layer BERT whose WordPiece vocab splits 'berlin' into 'ber' + '##lin'."""
    from transformers import BertConfig, BertModel, BertTokenizer

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ner-bert")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizer(vocab=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    BertModel(
        BertConfig(
            vocab_size=len(VOCAB),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            max_position_embeddings=32,
        )
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def ner_jsonl(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ner-data") / "ner.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in make_sentences(400)))
    return path


def recipe_for(checkpoint: Path, source: Path | str, tmp_path: Path, **data) -> object:
    return validate_recipe(
        {
            "name": "ner-toy",
            "task": "token-classification",
            "model": {"checkpoint": str(checkpoint)},
            "data": {"source": str(source), "max_length": 24, **data},
            "optim": {"lr": 3e-3, "warmup_ratio": 0.0, "scheduler": "constant"},
            "train": {"min_steps": 0, "epochs": 5, "batch_size": 16, "log_steps": 5, "seed": 0},
            "output": {"dir": str(tmp_path / "run")},
        },
        str(tmp_path / "recipe.yaml"),
    )


def encode(rows: list[dict], recipe, tokenizer, labels=LABELS):
    import datasets

    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})
    return task().encode(splits, tokenizer, recipe, list(labels))


# --------------------------------------------------------------------------- alignment
@pytest.mark.parametrize(
    "label_all, expected",
    [
        (False, [IGNORE, 1, 2, 0, 3, IGNORE, IGNORE]),  # [CLS] john smith visits ber ##lin [SEP]
        (True, [IGNORE, 1, 2, 0, 3, 4, IGNORE]),  # the B-LOC word's second sub-word becomes I-LOC
    ],
)
def test_align_labels_first_or_all_subtokens(label_all, expected):
    word_ids = [None, 0, 1, 2, 3, 3, None]
    assert align_labels(word_ids, [1, 2, 0, 3], continuation_ids(LABELS), label_all) == expected


def test_continuation_maps_b_to_i_only_when_i_exists():
    # B-ORG has no I-ORG in the label set: later sub-words keep B-ORG
    assert continuation_ids(LABELS) == [0, 2, 2, 4, 4, 5]


@pytest.mark.parametrize("label_all", [False, True])
def test_encode_aligns_words_to_wordpieces(ner_bert_dir, tmp_path, label_all):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ner_bert_dir)
    recipe = recipe_for(ner_bert_dir, "unused", tmp_path, label_all_subtokens=label_all)
    rows = [{"tokens": ["Mary", "visits", "Berlin"], "ner_tags": ["B-PER", "O", "B-LOC"]}]
    encoded, reports = encode(rows, recipe, tokenizer)
    example = encoded["train"][0]
    assert tokenizer.convert_ids_to_tokens(example["input_ids"]) == ["[CLS]", "mary", "visits", "ber", "##lin", "[SEP]"]
    assert example["labels"] == [IGNORE, 1, 0, 3, 4 if label_all else IGNORE, IGNORE]
    assert example["length"] == 6 and reports == []


def test_truncated_sentences_are_reported(ner_bert_dir, tmp_path):
    from transformers import AutoTokenizer

    recipe = recipe_for(ner_bert_dir, "unused", tmp_path, max_length=5)
    rows = [
        {
            "tokens": ["john", "smith", "lives", "in", "new", "york"],
            "ner_tags": ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC"],
        }
    ]
    encoded, reports = encode(rows, recipe, AutoTokenizer.from_pretrained(ner_bert_dir))
    assert len(encoded["train"][0]["input_ids"]) == 5
    assert reports == [
        "1 train sentence(s) are longer than data.max_length=5 sub-word tokens; their last words are cut off"
    ]


# --------------------------------------------------------------------------- bad input
BAD_ROWS = {
    "unknown-tag": (
        {"tokens": ["john", "visits", "paris"], "ner_tags": ["B-PER", "O", "B-CITY"]},
        "tag 'B-CITY' (token 2, 'paris') is not in the label set",
    ),
    "length-mismatch": (
        {"tokens": ["john", "visits", "paris"], "ner_tags": ["B-PER", "O"]},
        "3 tokens but 2 tags in column 'ner_tags'",
    ),
    "empty-sentence": ({"tokens": [], "ner_tags": []}, "empty sentence (no tokens in column 'tokens')"),
}


@pytest.mark.parametrize("row, problem", BAD_ROWS.values(), ids=list(BAD_ROWS))
def test_bad_sentence_is_named_or_skipped_and_counted(ner_bert_dir, tmp_path, row, problem):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ner_bert_dir)
    good = {"tokens": ["mary", "visits", "london"], "ner_tags": ["B-PER", "O", "B-LOC"]}
    with pytest.raises(DataError) as info:
        encode([good, good, row], recipe_for(ner_bert_dir, "unused", tmp_path), tokenizer)
    assert f"train example 2: {problem}" in str(info.value) and "data.on_error: skip" in str(info.value)

    encoded, reports = encode(
        [good, row, good], recipe_for(ner_bert_dir, "unused", tmp_path, on_error="skip"), tokenizer
    )
    assert len(encoded["train"]) == 2
    assert len(reports) == 1 and reports[0].startswith(f"skipped 1 bad train example(s) (first: #1: {problem}")


def test_label_names_from_classlabel_strings_or_recipe(tmp_path, ner_bert_dir):
    import datasets

    recipe = recipe_for(ner_bert_dir, "unused", tmp_path)
    strings = datasets.DatasetDict({"train": datasets.Dataset.from_list(make_sentences(50))})
    assert task().label_names(strings, recipe) == ["O", "B-LOC", "I-LOC", "B-ORG", "B-PER", "I-PER"]
    feature = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=LABELS)),
        }
    )
    ids = datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"tokens": [["john"]], "ner_tags": [[1]]}, features=feature)}
    )
    assert task().label_names(ids, recipe) == LABELS
    numbers = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"tokens": [["john"]], "ner_tags": [[1]]})})
    with pytest.raises(DataError, match="numbers without names.*data.label_names"):
        task().label_names(numbers, recipe)
    assert task().label_names(numbers, recipe_for(ner_bert_dir, "unused", tmp_path, label_names=LABELS)) == LABELS


# --------------------------------------------------------------------------- metrics
def test_metrics_are_entity_level_and_ignore_padding():
    ref = torch.tensor([[IGNORE, 1, 2, 0, 3, IGNORE], [IGNORE, 5, 0, IGNORE, IGNORE, IGNORE]])
    perfect = task().compute_metrics(ref.clamp(min=0), ref, LABELS)  # ignored positions may hold anything
    assert perfect == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "accuracy": 1.0}
    # 'john smith' cut to 'john' is a wrong entity, though 3 of 4 PER/O tags in it are right
    partial = torch.tensor([[0, 1, 0, 0, 3, 0], [0, 5, 0, 0, 0, 0]])
    scores = task().compute_metrics(partial, ref, LABELS)
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["accuracy"] == pytest.approx(5 / 6)


# --------------------------------------------------------------------------- training and reload
@pytest.mark.parametrize("label_all", [False, True], ids=["first-subword", "all-subwords"])
def test_tiny_ner_learns_and_reloads_with_pipeline(ner_bert_dir, ner_jsonl, tmp_path, label_all):
    from transformers import pipeline

    from hftl.cli.predict import predict
    from hftl.training.train import run

    result = run(recipe_for(ner_bert_dir, ner_jsonl, tmp_path, label_all_subtokens=label_all))
    log = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < 0.3 * losses[0], losses
    assert result.metrics["test"]["f1"] > 0.9, result.metrics

    sentence = "mary smith visits berlin today ."
    pipe = pipeline("token-classification", model=str(result.run_dir), aggregation_strategy="simple")
    found = [(e["entity_group"], e["word"]) for e in pipe(sentence)]
    if label_all:  # later sub-words learnt I-LOC, so "simple" keeps 'ber' + '##lin' together
        assert found == [("PER", "mary smith"), ("LOC", "berlin")]
    else:  # later sub-words were never trained: "simple" may split 'berlin', the words are right
        assert found[0] == ("PER", "mary smith") and found[1] in [("LOC", "ber"), ("LOC", "berlin")], found
    # hftl predict aggregates per word (first sub-word), whichever way the run was labelled
    first, second = predict(result.run_dir, [sentence, "john works at google ."])
    assert [r["label"] for r in first] == ["PER:mary smith", "LOC:berlin"]
    assert [r["label"] for r in second] == ["PER:john", "ORG:google"]


@pytest.mark.integration
def test_wnut_recipe_on_real_minilm(tmp_path):
    """The shipped offline recipe, a few dozen steps: entities found, loss falls, the run reloads in a pipeline."""
    from transformers import pipeline

    from hftl.training.train import run

    recipe = load_recipe(
        RECIPES / "wnut-ner.yaml",
        [
            f"output.dir={tmp_path / 'run'}",
            "train.max_steps=40",
            "train.eval_steps=40",
            "data.max_length=48",
            "data.max_eval_samples=120",
            "optim.warmup_ratio=0.05",
        ],
    )
    result = run(recipe)
    log = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < 0.5 * losses[0], losses
    assert result.metrics["validation"]["f1"] > 0, result.metrics

    pipe = pipeline("token-classification", model=str(result.run_dir), aggregation_strategy="simple")
    kinds = {label[2:] for label in json.loads((result.run_dir / "labels.json").read_text()) if label != "O"}
    entities = pipe("Going to see the Empire State Building in New York with Justin Bieber")
    assert {e["entity_group"] for e in entities} <= kinds
    assert all(0 <= e["start"] < e["end"] and 0 < e["score"] <= 1 for e in entities)
