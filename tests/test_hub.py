"""Pushing runs to a fake Hugging Face Hub on 127.0.0.1 (the real Hub is unreachable here).

The fake implements the few endpoints huggingface_hub 2.x calls for a push:
whoami, create-repo, create-branch, validate-yaml, preupload (it answers
"regular" for every file, so no LFS/Xet storage is involved) and commit. A
real tiny run is trained with ``hub.push: true``, what the fake received is
written to a folder and loaded with a plain ``transformers.pipeline``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml

from hftl.config.errors import HftlError

TOKEN = "hf_fake_alice_token_0123456789"
USERS = {TOKEN: {"name": "alice", "orgs": ["alice-org"]}}


class FakeHub:
    """Repos in memory: repo_id -> {"owner", "private", "branches": {name: {path: bytes}}, "commits": [...]}."""

    def __init__(self) -> None:
        self.repos: dict[str, dict] = {
            "bob/sentiment": {"owner": "bob", "private": False, "branches": {"main": {}}, "commits": []}
        }
        self.requests: list[tuple[str, str]] = []
        self.unexpected: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        return self.repos[repo_id]["branches"][branch]

    # -- the endpoints -------------------------------------------------------------------------
    def route(self, method: str, path: str, headers, body: bytes) -> tuple[int, dict, dict]:
        user = USERS.get(headers.get("authorization", "").removeprefix("Bearer "))
        if user is None:
            return (
                401,
                {"error": "Invalid credentials in Authorization header"},
                {"X-Error-Message": "Invalid credentials in Authorization header"},
            )
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if method == "GET" and path == "/api/whoami-v2":
            return 200, {"type": "user", "name": user["name"], "orgs": [{"name": o} for o in user["orgs"]]}, {}
        if method == "POST" and path == "/api/validate-yaml":
            meta = yaml.safe_load(json.loads(body)["content"].split("---")[1])
            bases = meta.get("base_model") or []
            bad = [b for b in ([bases] if isinstance(bases, str) else bases) if b.count("/") != 1 or b.startswith("/")]
            if bad:
                return 400, {"errors": [{"message": f"base_model must be Hub model ids, got {bad}"}]}, {}
            return 200, {"errors": [], "warnings": []}, {}
        if method == "POST" and path == "/api/repos/create":
            payload = json.loads(body)
            owner = payload.get("organization") or user["name"]
            repo_id = f"{owner}/{payload['name']}"
            if owner not in (user["name"], *user["orgs"]):
                return 403, {"error": f'You don\'t have the rights to create a model under the namespace "{owner}"'}, {}
            if repo_id in self.repos:
                return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}, {}
            self.repos[repo_id] = {
                "owner": owner,
                "private": payload.get("visibility") == "private",
                "branches": {"main": {}},
                "commits": [],
            }
            return 200, {"url": f"{self.url}/{repo_id}"}, {}
        if len(parts) == 6 and parts[:2] == ["api", "models"] and method == "POST":
            repo_id, action, rev = f"{parts[2]}/{parts[3]}", parts[4], parts[5]
            repo = self.repos.get(repo_id)
            if repo is None:
                return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
            if repo["owner"] not in (user["name"], *user["orgs"]):
                return 403, {"error": "You don't have write access to this repo"}, {}
            if action == "branch":
                if rev in repo["branches"]:
                    return 409, {"error": "Branch already exists"}, {}
                repo["branches"][rev] = dict(repo["branches"]["main"])
                return 200, {}, {}
            if rev not in repo["branches"]:
                return 404, {"error": f"Invalid rev id: {rev}"}, {"X-Error-Code": "RevisionNotFound"}
            if action == "preupload":
                files = json.loads(body)["files"]
                return (
                    200,
                    {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]},
                    {},
                )
            if action == "commit":
                return self.commit(repo_id, repo["branches"][rev], body)
        self.unexpected.append(f"{method} {path}")
        return 404, {"error": f"fake hub: no route for {method} {path}"}, {}

    def commit(self, repo_id: str, branch: dict[str, bytes], body: bytes) -> tuple[int, dict, dict]:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        for line in lines[1:]:
            if line["key"] != "file":
                return 400, {"error": f"fake hub only takes regular files, got {line['key']}"}, {}
            branch[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
        oid = hashlib.sha1(body).hexdigest()
        self.repos[repo_id]["commits"].append({"summary": lines[0]["value"]["summary"], "files": len(lines) - 1})
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid, "success": True}, {}

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                path = urlparse(self.path).path
                hub.requests.append((method, path))
                status, payload, extra = hub.route(method, path, {k.lower(): v for k, v in self.headers.items()}, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                for key, value in {
                    "Content-Type": "application/json",
                    "Content-Length": str(len(data)),
                    **extra,
                }.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def log_message(self, *args) -> None:
                pass

        return Handler


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The fake Hub, with huggingface_hub pointed at it, online, and alice's token in HF_TOKEN."""
    from huggingface_hub import constants

    fake = FakeHub()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "ENDPOINT", fake.url)
        mp.setattr(constants, "HF_HUB_OFFLINE", False)
        mp.setattr(constants, "HF_TOKEN_PATH", str(tmp_path_factory.mktemp("hf-home") / "token"))
        mp.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path_factory.mktemp("hf-home") / "stored_tokens"))
        mp.setenv("HF_TOKEN", TOKEN)
        mp.delenv("HF_OIDC_RESOURCE", raising=False)
        yield fake
    fake.close()


@pytest.fixture(scope="module")
def pushed_run(hub, tmp_path_factory, tiny_bert_dir, reviews_csv):
    """A tiny run trained with hub.push: true (private) and the TensorBoard tracker on."""
    from hftl.config.recipe import load_recipe
    from hftl.training.train import run

    folder = tmp_path_factory.mktemp("pushed")
    recipe = folder / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "toy-push",
                "task": "text-classification",
                "model": {"checkpoint": str(tiny_bert_dir)},
                "data": {"source": str(reviews_csv), "group_column": "movie", "max_length": 16},
                "optim": {"lr": 2e-3, "warmup_ratio": 0.0, "scheduler": "constant"},
                "train": {
                    "min_steps": 0,
                    "epochs": 4,
                    "batch_size": 16,
                    "log_steps": 5,
                    "seed": 0,
                    "trackers": ["tensorboard"],
                },
                "output": {"dir": str(folder / "run"), "keep_checkpoints": "last"},
                "hub": {"push": True, "repo_id": "alice/toy-sentiment", "private": True},
            }
        )
    )
    return run(load_recipe(recipe)).run_dir


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file's content hash and mtime: proof that a push left the run folder alone."""
    return {
        p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------- tests
def test_recipe_push_lands_in_one_commit_and_reloads_with_pipeline(hub, pushed_run, tmp_path):
    repo = hub.repos["alice/toy-sentiment"]
    assert repo["private"] and len(repo["commits"]) == 1, repo["commits"]
    files = hub.files("alice/toy-sentiment")
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "README.md",
        "recipe.yaml",
        "labels.json",
        "plan.json",
        "metrics.json",
        "training_curves.png",
        "learning_rates.png",
    } <= set(files)
    assert not [f for f in files if f.split("/")[0] in ("checkpoints", "best", "logs") or f == "run_status.json"]
    assert (pushed_run / "logs").is_dir() and (pushed_run / "checkpoints").is_dir()  # they exist, and stayed local
    assert list((pushed_run / "logs").rglob("events.out.tfevents*")), "TensorBoard wrote no events"
    assert not hub.unexpected

    received = tmp_path / "received"
    for name, data in files.items():
        (received / name).parent.mkdir(parents=True, exist_ok=True)
        (received / name).write_bytes(data)
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(received))
    assert classify("a great movie")[0]["label"] == "pos"
    assert classify("an awful plot")[0]["label"] == "neg"
    card = files["README.md"].decode()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["pipeline_tag"] == "text-classification" and meta["library_name"] == "transformers"
    assert 'pipeline("text-classification", model="alice/toy-sentiment")' in card
    assert TOKEN not in card


def test_cli_push_to_an_org_branch_leaves_the_run_folder_untouched(hub, pushed_run, capsys):
    from hftl.cli import main

    before = snapshot(pushed_run)
    assert main(["push", str(pushed_run), "--repo-id", "alice-org/toy", "--revision", "v1"]) == 0
    assert "alice-org/toy/commit/" in capsys.readouterr().out
    assert "model.safetensors" in hub.files("alice-org/toy", "v1") and not hub.files("alice-org/toy", "main")
    assert not hub.repos["alice-org/toy"]["private"]
    assert snapshot(pushed_run) == before


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no token", "no token found"),
        ("bad token", "rejected the token (401"),
        ("other owner", "it is under 'bob', but the token belongs to 'alice'"),
        ("network down", "Cannot reach the Hugging Face Hub"),
        ("offline", "offline mode is on"),
    ],
)
def test_push_errors_are_clear_and_change_nothing(hub, pushed_run, monkeypatch, capsys, case, expected):
    from huggingface_hub import constants

    from hftl.cli import main

    repo_id = "bob/sentiment" if case == "other owner" else "alice/errors"
    if case == "no token":
        monkeypatch.delenv("HF_TOKEN")
    elif case == "bad token":
        monkeypatch.setenv("HF_TOKEN", "hf_not_a_valid_token")
    elif case == "network down":
        with socket.socket() as sock:  # a port nobody listens on
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    elif case == "offline":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    before, commits = snapshot(pushed_run), {r: len(v["commits"]) for r, v in hub.repos.items()}

    assert main(["push", str(pushed_run), "--repo-id", repo_id]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and TOKEN not in err, err
    assert snapshot(pushed_run) == before
    assert "alice/errors" not in hub.repos and {r: len(v["commits"]) for r, v in hub.repos.items()} == commits


def test_a_file_holding_the_token_stops_the_push(hub, pushed_run, tmp_path):
    import shutil

    from hftl.publish.hub import push_run

    copy = tmp_path / "run"
    shutil.copytree(pushed_run, copy, ignore=shutil.ignore_patterns("checkpoints", "best", "logs"))
    (copy / "notes.txt").write_text(f"my token is {TOKEN}\n")
    (copy / ".env").write_text(f"HF_TOKEN={TOKEN}\n")  # secret-looking files are never uploaded at all
    with pytest.raises(HftlError, match="'notes.txt' contains your Hugging Face token"):
        push_run(copy, "alice/leak")
    assert "alice/leak" not in hub.repos


def test_adapter_config_is_pushed_with_the_hub_base_model(hub, pushed_run, tmp_path):
    """A LoRA run's adapter_config.json names a local base folder; the pushed copy names the Hub id."""
    import shutil

    from hftl.publish.hub import push_run

    copy = tmp_path / "run"
    shutil.copytree(pushed_run, copy, ignore=shutil.ignore_patterns("checkpoints", "best", "logs"))
    recipe = yaml.safe_load((copy / "recipe.yaml").read_text())
    recipe["model"]["checkpoint"] = "all-MiniLM-L6-v2"  # a catalog name, resolved to a local folder when training
    (copy / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (copy / "adapter").mkdir()
    (copy / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/local/minilm"}))
    (copy / "adapter" / "README.md").write_text("peft's template card")
    push_run(copy, "alice/lora")
    files = hub.files("alice/lora")
    config = json.loads(files["adapter/adapter_config.json"])
    assert config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert "adapter/README.md" not in files
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in files["README.md"].decode()
    assert (
        json.loads((copy / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == "/local/minilm"
    )


def test_push_in_a_recipe_without_a_token_fails_before_training(text_recipe, monkeypatch, tmp_path):
    from huggingface_hub import constants

    from hftl.config.recipe import load_recipe
    from hftl.training.train import run

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    recipe = load_recipe(text_recipe(hub={"push": True, "repo_id": "alice/x"}))
    with pytest.raises(HftlError, match="no token found"):
        run(recipe)
    assert not recipe.run_dir.exists()
