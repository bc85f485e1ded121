"""Data sources: an offline catalog name (:mod:`hftl.data.catalog`), local files and folders, Hub ids.

Every source becomes a ``datasets.DatasetDict``; :func:`hftl.data.splits.ensure_splits` then
gives it ``train``/``validation``/``test``, the same way in every run and process.

"""

from __future__ import annotations

import logging
import os
import pathlib

import datasets
import datasets.exceptions

from hftl.config.errors import DataError
from hftl.config.registry import did_you_mean
from hftl.data.catalog import DATASETS

FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# Builders that take local data_files (resolved against the recipe folder).
PACKAGED_BUILDERS = {"csv", "json", "parquet", "text", "arrow", "imagefolder", "audiofolder"}
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
