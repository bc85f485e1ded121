"""Push a finished run folder to the Hugging Face Hub: one repo, one commit, the local folder untouched.

What lands in the repo is what loads: the model (``save_pretrained`` files or
a LoRA adapter with its head), the processor, ``labels.json``, the resolved
``recipe.yaml``, ``plan.json``, the metrics and plots, and a README.md model
card written for that repo id. Resumable states (``checkpoints/``), the
``best/`` copy, tracker ``logs/``, temporary files and anything that looks like
a secret stay local. The token comes from ``HF_TOKEN`` or ``hf auth login``
(``huggingface_hub.get_token``), never from a recipe, and is written nowhere;
a file that contains it stops the push before anything is sent.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftl.config.errors import HftlError

if TYPE_CHECKING:
    from huggingface_hub import CommitOperationAdd

LOCAL_ONLY_DIRS = {"checkpoints", "best", "logs", ".cache", ".git"}
LOCAL_ONLY_FILES = ["run_status.json"]
SECRET_FILES = [
    ".env",
    "*.env",
    ".netrc",
    ".git-credentials",
    "*.pem",
    "*.key",
    "id_rsa*",
    "id_ed25519*",
    "token",
    "*.token",
    "stored_tokens",
    "hf_token*",
    "credentials*",
    "secrets*",
]
_SCAN_LIMIT = 64 * 1024 * 1024  # bytes; larger files (weights) are not searched for the token


def check_can_push(token: str | None = None) -> str:
    """The token to push with, or a clear error (no network): call before a long run that ends in a push."""
    from huggingface_hub import constants, get_token

    if constants.is_offline_mode():
        raise HftlError(
            "Cannot push to the Hugging Face Hub: offline mode is on (HF_HUB_OFFLINE=1). Unset it "
            "to push, or set hub.push=false and push later with `hftl push RUN_DIR --repo-id USER/NAME`."
        )
    token = token or get_token()
    if not token:
        raise HftlError(
            "Cannot push to the Hugging Face Hub: no token found. Set the HF_TOKEN environment variable "
            "or run `hf auth login` with a token that has write access "
            "(https://huggingface.co/settings/tokens). Recipes never hold tokens."
        )
    return token


def upload_files(run_dir: str | Path) -> list[Path]:
    """The files of a run folder that go to the Hub (sorted), leaving out local state and secrets."""
    run_dir = Path(run_dir)
    chosen = []
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(run_dir)
        if rel.parts[0] in LOCAL_ONLY_DIRS or any(part.startswith((".tmp-", ".old-")) for part in rel.parts):
            continue
        if _matches(rel.name, SECRET_FILES) or rel.name == "README.md" or rel.as_posix() in LOCAL_ONLY_FILES:
            continue  # README.md: the card is written for the repo (and peft's template card is left out)
        chosen.append(path)
    return chosen


def push_run(
    run_dir: str | Path, repo_id: str, private: bool = False, revision: str | None = None, token: str | None = None
) -> str:
    """Create ``repo_id`` (if needed) and upload the run in one commit; returns the commit URL.

    ``revision`` pushes to that branch (created from main when missing). ``private``
    applies when the repo is created; an existing repo keeps its visibility.
    """
    from huggingface_hub import HfApi

    from hftl.publish.card import build_card
    from hftl.training.run_folder import read_status

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise HftlError(f"Cannot push {run_dir}: no such run folder.")
    status = read_status(run_dir).get("status")
    if status != "completed":
        raise HftlError(
            f"Cannot push {run_dir}: its run is {status or 'not an hftl run'}, not completed. "
            "Finish it first (`hftl run RECIPE --resume`)."
        )
    token = check_can_push(token)
    api = HfApi(token=token)
    later = (
        f"Nothing was uploaded and {run_dir} is unchanged; push it later with "
        f"`hftl push {run_dir} --repo-id {repo_id}`."
    )
    with _hub_errors(repo_id, api.endpoint, later):
        user = api.whoami()
        repo_id = _full_repo_id(repo_id, user)
        card = str(build_card(run_dir, repo_id)).encode("utf-8")
        operations = _operations(run_dir, card, token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.create_commit(
            repo_id,
            operations=operations,
            revision=revision,
            commit_message=f"Upload hftl run '{run_dir.name}'",
            commit_description=f"{len(operations)} files from an hftl run folder.",
        )
    return str(info.commit_url)


# --------------------------------------------------------------------------- helpers
def _operations(run_dir: Path, card: bytes, token: str) -> list[CommitOperationAdd]:
    """One add per uploaded file, the repo's model card, and an adapter config that names the Hub base."""
    from huggingface_hub import CommitOperationAdd

    contents: dict[str, bytes | str] = {p.relative_to(run_dir).as_posix(): str(p) for p in upload_files(run_dir)}
    contents["README.md"] = card
    for name in ("adapter/adapter_config.json", "adapter_config.json"):
        if name in contents:
            contents[name] = _adapter_config_for_hub(run_dir, run_dir / name)
    secret = token.encode("utf-8")
    for name, content in contents.items():
        data = content if isinstance(content, bytes) else _head(Path(content))
        if secret in data:
            raise HftlError(
                f"Refusing to push {run_dir}: '{name}' contains your Hugging Face token. Remove it from "
                "the file (tokens belong in HF_TOKEN or `hf auth login`), then push again."
            )
    return [CommitOperationAdd(path_in_repo=name, path_or_fileobj=content) for name, content in contents.items()]


def _adapter_config_for_hub(run_dir: Path, path: Path) -> bytes:
    """adapter_config.json with ``base_model_name_or_path`` set to the base's Hub id (it holds a local path)."""
    from hftl.publish.card import _base_checkpoints, _checkpoint_hub_id, read_run

    config = json.loads(path.read_text(encoding="utf-8"))
    bases = [b for b in (_checkpoint_hub_id(c) for c in _base_checkpoints(read_run(run_dir).recipe)) if b]
    if len(bases) == 1:
        config["base_model_name_or_path"] = bases[0]
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _full_repo_id(repo_id: str, user: dict[str, Any]) -> str:
    """'name' -> 'user/name'; refuse a namespace the token's account cannot write to."""
    name = user.get("name", "")
    if "/" not in repo_id:
        return f"{name}/{repo_id}"
    owner = repo_id.split("/")[0]
    orgs = [o.get("name") for o in user.get("orgs", []) if isinstance(o, dict)]
    if user.get("type", "user") == "user" and owner not in (name, *orgs):
        raise HftlError(
            f"Cannot push to '{repo_id}': it is under '{owner}', but the token belongs to '{name}'"
            + (f" (organisations: {', '.join(orgs)})" if orgs else " (no organisations)")
            + f". Push to '{name}/{repo_id.split('/', 1)[1]}', or log in with an account that can "
            f"write to '{owner}'."
        )
    return repo_id


@contextmanager
def _hub_errors(repo_id: str, endpoint: str, later: str) -> Iterator[None]:
    """Turn huggingface_hub / network failures into one clear paragraph (the token never appears in it)."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        yield
    except OfflineModeIsEnabled:
        raise HftlError(
            f"Cannot push to the Hugging Face Hub: offline mode is on (HF_HUB_OFFLINE=1). {later}"
        ) from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        detail = getattr(exc, "server_message", None) or str(exc).splitlines()[0]
        if status == 401:
            raise HftlError(
                f"The Hugging Face Hub at {endpoint} rejected the token (401 Unauthorized): it is "
                "invalid or expired. Set a valid write token in HF_TOKEN or run `hf auth login` "
                f"(https://huggingface.co/settings/tokens). {later}"
            ) from None
        if status == 403:
            raise HftlError(
                f"The token may not write to '{repo_id}' (403 Forbidden: {detail}). Use a token with "
                f"write access to that namespace, or another repo id. {later}"
            ) from None
        raise HftlError(f"The Hugging Face Hub refused the push to '{repo_id}' ({status}: {detail}). {later}") from None
    except _transport_errors() as exc:
        raise HftlError(
            f"Cannot reach the Hugging Face Hub at {endpoint} ({type(exc).__name__}: {exc}). Check the "
            f"network, a proxy, or HF_ENDPOINT. {later}"
        ) from None
    except ValueError as exc:  # e.g. the Hub rejecting the card's metadata
        raise HftlError(f"The push to '{repo_id}' failed: {exc}. {later}") from None


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network-level errors of the HTTP client huggingface_hub uses (httpx2 in 2.x, httpx in 1.x)."""
    import importlib

    found: list[type[BaseException]] = []
    for module in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(found) or (ConnectionError,)


def _head(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(_SCAN_LIMIT)


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)
