"""The ``hftl`` command line: run, validate, plan, predict, push.

Only argparse and the recipe schema are imported up front, so ``hftl --help``
and ``hftl validate`` answer in about a second; torch and transformers load
when a command needs them.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable

from hftl.config.errors import HftlError

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    COMMANDS[fn.__name__.removeprefix("cmd_")] = fn
    return fn


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hftl",
        description="Transfer learning with Hugging Face checkpoints, driven by YAML recipes.",
        epilog="Multi-process: accelerate launch hftl/run.py RECIPE [key.path=value ...] (see README).",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for user errors")
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="only warnings, errors and a run's final summary (no progress bars); or HFTL_LOG_LEVEL",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug messages too (HFTL_LOG_LEVEL=DEBUG)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def recipe_command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("recipe", help="recipe YAML file, or a shipped recipe's name (hftl recipes), e.g. sentiment")
        p.add_argument("overrides", nargs="*", metavar="key.path=value", help="override recipe values")
        return p

    run = recipe_command("run", "train, evaluate and save a recipe")
    run.add_argument("--resume", action="store_true", help="continue from the run folder's last saved state")
    recipe_command("validate", "check a recipe without loading weights or data")
    recipe_command("plan", "print the layer groups, LRs and unfreezing schedule without training")
    advise = recipe_command("advise", "measure the data and checkpoint and recommend a strategy (about a minute)")
    advise.add_argument("--write", metavar="OUT.yaml", help="write the recipe with the recommended keys")
    advise.add_argument("--verify", action="store_true", help="run a small study: recommended vs its neighbours")
    advise.add_argument("--seeds", type=int, default=1, help="seeds per strategy for --verify (default 1)")
    advise.add_argument("--verify-steps", type=int, help="cap each --verify trial at this many optimizer steps")
    predict = sub.add_parser("predict", help="predict with a trained run folder")
    predict.add_argument("run_dir")
    predict.add_argument("--text", action="append", default=[], help="a text to classify (repeatable)")
    predict.add_argument("--image", action="append", default=[], help="an image path (repeatable)")
    predict.add_argument("--file", help="a file with one input per line (texts, image paths, or image<TAB>text pairs)")
    predict.add_argument("--top-k", type=int, default=1)
    push = sub.add_parser(
        "push",
        help="upload a finished run folder to the Hugging Face Hub (one commit)",
        description="Upload a finished run folder to the Hugging Face Hub in one commit, with a "
        "model card. The token comes from HF_TOKEN or `hf auth login`.",
    )
    push.add_argument("run_dir")
    push.add_argument("--repo-id", required=True, help="USER/NAME or ORG/NAME (created if missing)")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--revision", help="branch to push to (created from main if missing)")
    study = sub.add_parser("study", help="run a study (a grid or search over recipe overrides); resumable")
    study.add_argument("study", help="study YAML file, e.g. studies/sentiment-strategies.yaml")
    study.add_argument("--storage", help="Optuna RDB URL shared by workers (default: sqlite in the study folder)")
    study.add_argument("--jobs", type=int, help="local worker processes (default: the study's jobs, else 1)")
    study.add_argument("--report", action="store_true", help="rebuild results.csv, report.md and plots; no training")
    recipes = sub.add_parser(
        "recipes",
        help="list the recipes that ship with hftl, or copy one (recipes cp NAME DEST)",
        description="List the shipped recipes with one line each, or copy one to edit: "
        "hftl recipes cp sentiment my.yaml. `hftl run NAME` runs a shipped recipe directly.",
    )
    recipes.add_argument("action", nargs="?", choices=["ls", "cp"], default="ls")
    recipes.add_argument("name", nargs="?", help="cp: the shipped recipe's name, e.g. sentiment")
    recipes.add_argument("dest", nargs="?", help="cp: file or folder to copy it to")
    cache = sub.add_parser(
        "cache",
        help="list hftl's caches (datasets, exported checkpoints, features) or clear them",
        description="List hftl's caches under $HFTL_CACHE_DIR (default ~/.cache/hftl) with their "
        "sizes, or clear them. Entries are rebuilt when needed.",
    )
    cache.add_argument("action", nargs="?", choices=["ls", "clear"], default="ls", help="ls (default) or clear")
    cache.add_argument("--all", action="store_true", help="clear: every entry")
    cache.add_argument("--older-than", type=float, metavar="DAYS", help="clear: entries not modified for DAYS days")
    cache.add_argument(
        "--kind",
        action="append",
        choices=["datasets", "checkpoints", "features", "other"],
        help="only this kind (repeatable)",
    )
    cache.add_argument("--dry-run", action="store_true", help="clear: show what would be removed, remove nothing")
    return parser


@command
def cmd_recipes(args: argparse.Namespace) -> int:
    from hftl.config.shipped_recipes import copy_shipped, format_list

    if args.action == "ls":
        if args.name or args.dest:
            raise HftlError("hftl recipes lists the shipped recipes; to copy one: hftl recipes cp NAME DEST.")
        print(format_list())
        return 0
    if not (args.name and args.dest):
        raise HftlError(
            "hftl recipes cp needs a recipe name and a destination, e.g. hftl recipes cp sentiment my.yaml."
        )
    print(f"copied {args.name} -> {copy_shipped(args.name, args.dest)}")
    return 0


@command
def cmd_cache(args: argparse.Namespace) -> int:
    import time

    from hftl.data.cache import cache_entries, format_entries, format_size, remove_entries, select
    from hftl.data.sources import cache_dir

    root, now = cache_dir(), time.time()
    entries = [e for e in cache_entries(root) if not args.kind or e.kind in args.kind]
    if args.action == "ls":
        if args.all or args.older_than is not None or args.dry_run:
            raise HftlError("--all, --older-than and --dry-run go with `hftl cache clear`.")
        print(format_entries(entries, root, now))
        return 0
    if args.all == (args.older_than is not None):
        raise HftlError("hftl cache clear needs exactly one of --all or --older-than DAYS.")
    if args.older_than is not None and args.older_than < 0:
        raise HftlError(f"--older-than takes a number of days >= 0, got {args.older_than:g}.")
    chosen = select(entries, everything=args.all, older_than_days=args.older_than, now=now)
    for entry in chosen:
        print(
            f"{'would remove' if args.dry_run else 'removing'} {entry.kind}/{entry.path.name} "
            f"({format_size(entry.size)})"
        )
    freed = sum(e.size for e in chosen) if args.dry_run else remove_entries(chosen)
    print(f"{'would free' if args.dry_run else 'freed'} {format_size(freed)} in {len(chosen)} entries ({root})")
    return 0


@command
def cmd_run(args: argparse.Namespace) -> int:
    from hftl.config.recipe import load_recipe
    from hftl.training.train import run

    run(load_recipe(args.recipe, args.overrides), resume=args.resume or None)
    return 0


@command
def cmd_validate(args: argparse.Namespace) -> int:
    from hftl.config.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    m = recipe.model
    model = (
        m.checkpoint
        or (m.init_from and f"init_from {m.init_from}")
        or " + ".join(f"{tower} {spec.checkpoint}" for tower, spec in (m.towers or {}).items())
    )
    print(
        f"{args.recipe}: ok ({recipe.task}, {model}, strategy {recipe.strategy.name}, "
        f"data {recipe.data.where}) -> {recipe.run_dir}"
    )
    return 0


@command
def cmd_plan(args: argparse.Namespace) -> int:
    from hftl.config.recipe import load_recipe
    from hftl.training.build import describe_plan

    print(describe_plan(load_recipe(args.recipe, args.overrides)))
    return 0


@command
def cmd_advise(args: argparse.Namespace) -> int:
    from hftl.analysis.advise import run_advise

    return run_advise(args.recipe, args.overrides, args.write, args.verify, args.seeds, args.verify_steps)


@command
def cmd_predict(args: argparse.Namespace) -> int:
    from hftl.cli.predict import predict

    inputs = list(args.text) + list(args.image)
    if args.image and args.text:  # image + text pairs, in order (fusion runs)
        if len(args.image) != len(args.text):
            raise HftlError(
                f"--image and --text pair up in order for an image+text model: got {len(args.image)} "
                f"image(s) and {len(args.text)} text(s)."
            )
        inputs = [f"{image}\t{text}" for image, text in zip(args.image, args.text)]
    if args.file:
        try:
            with open(args.file, encoding="utf-8") as fh:
                inputs += [line.rstrip("\n") for line in fh if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise HftlError(
                f"Cannot read --file {args.file}: {getattr(exc, 'strerror', None) or exc}. It should be "
                "a UTF-8 text file with one input per line."
            ) from None
    if not inputs:
        raise HftlError("hftl predict needs inputs: --text '...', --image PATH or --file FILE.")
    for item, result in zip(inputs, predict(args.run_dir, inputs, top_k=args.top_k)):
        shown = item.replace("\t", " + ")
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        print(f"{shown}\t" + "  ".join(f"{r['label']} {r['score']:.3f}" for r in result))
    return 0


@command
def cmd_push(args: argparse.Namespace) -> int:
    from hftl.publish.hub import push_run

    url = push_run(args.run_dir, args.repo_id, private=args.private, revision=args.revision)
    print(f"pushed {args.run_dir} -> {url}")
    return 0


@command
def cmd_study(args: argparse.Namespace) -> int:
    from hftl.analysis.study import report_study, run_study

    if args.report:
        print(report_study(args.study, args.storage))
        return 0
    return run_study(args.study, args.storage, args.jobs)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hftl`` console script; user errors exit 2 with one clear paragraph."""
    args = build_parser().parse_args(argv)
    try:
        from hftl.config.log import configure

        configure(quiet=args.quiet, verbose=args.verbose)
        return COMMANDS[args.command](args)
    except HftlError as exc:
        if args.debug:
            traceback.print_exc()
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"hftl: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("hftl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
