"""Token classification (NER): word-level BIO tags, aligned to the checkpoint's sub-word tokens.

Datasets give one tag per *word* (``tokens`` + ``ner_tags``, as on the Hub); the model sees
sub-words. Alignment uses the fast tokenizer's ``word_ids()``: the first sub-word of a word
gets its tag and the rest get -100 (ignored by the loss and the metrics), or, with
``data.label_all_subtokens: true``, every sub-word is labelled (a ``B-X`` word's later
sub-words get ``I-X``). Metrics are entity-level (seqeval): an entity counts only when its
whole span and type are right.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hftl.config.errors import CheckpointError, DataError
from hftl.tasks import TASKS, CardInfo
from hftl.tasks.common import (
    BadExamples,
    argmax_predictions,
    check_columns_section,
    column,
    load_splits,
    pad_multiple,
    refuse_pooling,
    require_checkpoint,
    without_length,
)
from hftl.tasks.labels import check_problem_type

if TYPE_CHECKING:
    import datasets
    import torch

    from hftl.config.schema import Recipe
    from hftl.strategies.plan import Plan

IGNORE = -100
# Byte-level BPE tokenizers need a leading space to tokenize pre-split words as words.
_PREFIX_SPACE_TYPES = {"roberta", "gpt2", "bloom", "longformer", "bart", "deberta"}


def align_labels(
    word_ids: Sequence[int | None], tags: Sequence[int], continuation: Sequence[int], label_all_subtokens: bool = False
) -> list[int]:
    """One label per sub-word token: the word's tag on its first sub-word; later sub-words get -100,
    or ``continuation[tag]`` (B-X -> I-X) when ``label_all_subtokens``. Special tokens get -100."""
    labels, previous = [], None
    for word in word_ids:
        if word is None:
            labels.append(IGNORE)
        elif word != previous:
            labels.append(tags[word])
        else:
            labels.append(continuation[tags[word]] if label_all_subtokens else IGNORE)
        previous = word
    return labels


def continuation_ids(labels: list[str]) -> list[int]:
    """For each label id, the id a later sub-word of the same word gets: I-X for B-X (if I-X exists), else itself."""
    index = {name: i for i, name in enumerate(labels)}
    return [index.get("I-" + name[2:], i) if name.startswith("B-") else i for i, name in enumerate(labels)]


def _tag_feature(splits: datasets.DatasetDict, tags_column: str) -> Any:
    """The per-tag feature inside the tags column's list feature (a ClassLabel on Hub NER datasets)."""
    return getattr(splits["train"].features[tags_column], "feature", None)


class TokenClassification:
    name = "token-classification"
    roles = {"tokens": "tokens", "tags": "ner_tags"}
    required_roles = ("tokens", "tags")
    metric = "f1"
    problem_types = ("single_label",)
    towers = ()
    peft_task_type = "TOKEN_CLS"
    # "first": a word takes its first sub-word's tag, as hftl trains and scores it ("simple" splits a word
    # whose later sub-words, never trained, come out as B-X).
    card = CardInfo(
        "token-classification",
        '"Jamie flew to Berlin to see the Rolling Stones."',
        "AutoPeftModelForTokenClassification",
        ', aggregation_strategy="first"',
    )

    def check(self, recipe: Recipe) -> None:
        hint = "e.g. all-MiniLM-L6-v2 (offline) or dmis-lab/biobert-base-cased-v1.2 (Hub)."
        require_checkpoint(recipe, hint, init_from=False)
        refuse_pooling(recipe, "every token's state (no pooling)")
        check_columns_section(recipe, self.roles)
        check_problem_type(recipe, self.problem_types)

    def load_splits(self, recipe: Recipe) -> datasets.DatasetDict:
        return load_splits(recipe, self.roles, self.required_roles, task=self.name)

    def load_processor(self, recipe: Recipe) -> Any:
        from transformers import AutoConfig, AutoTokenizer

        from hftl.models.pretrained import load_pretrained

        m = recipe.model
        config = load_pretrained(
            AutoConfig, m.checkpoint, revision=m.revision, trust_remote_code=m.trust_remote_code, what="config"
        )
        extra = {"add_prefix_space": True} if config.model_type in _PREFIX_SPACE_TYPES else {}
        tokenizer = load_pretrained(
            AutoTokenizer,
            m.checkpoint,
            revision=m.revision,
            trust_remote_code=m.trust_remote_code,
            what="tokenizer",
            **extra,
        )
        if not tokenizer.is_fast:
            raise CheckpointError(
                f"model.checkpoint '{m.checkpoint}' has only a slow (Python) tokenizer; "
                "token-classification needs a fast one to map words to sub-words (word_ids). "
                "Use a checkpoint that ships tokenizer.json."
            )
        return tokenizer

    def label_names(self, splits: datasets.DatasetDict, recipe: Recipe) -> list[str]:
        """Recipe first, then the tags' ClassLabel names, then the distinct tags found ('O' first)."""
        import datasets

        if recipe.data.label_names:
            return list(recipe.data.label_names)
        tags_col = column(recipe.data, self.roles, "tags")
        feature = _tag_feature(splits, tags_col)
        if isinstance(feature, datasets.ClassLabel):
            return list(feature.names)
        found = {str(tag) for tags in splits["train"][tags_col] if tags for tag in tags}
        if found and all(tag.lstrip("-").isdigit() for tag in found):
            raise DataError(
                f"{recipe.source_file}: the tags in column '{tags_col}' are numbers without names; "
                "list the tag names in id order with data.label_names: [O, B-..., I-...]."
            )
        return sorted(found, key=lambda tag: (tag != "O", tag[2:], tag))

    def encode(
        self, splits: datasets.DatasetDict, processor: Any, recipe: Recipe, labels: list[str]
    ) -> tuple[datasets.DatasetDict, list[str]]:
        """Check every sentence, then tokenize the words and align their tags to sub-words."""
        import datasets

        tokens_col, tags_col = column(recipe.data, self.roles, "tokens"), column(recipe.data, self.roles, "tags")
        feature = _tag_feature(splits, tags_col)
        names = feature.names if isinstance(feature, datasets.ClassLabel) else None
        index = {name: i for i, name in enumerate(labels)}
        continuation = continuation_ids(labels)
        reports = []
        for split in list(splits):
            ds, bad = splits[split], BadExamples(recipe.data.on_error, split, recipe.source_file)
            keep, tag_ids = [], []
            for i, (words, tags) in enumerate(zip(ds[tokens_col], ds[tags_col])):
                if not words:
                    bad.bad(i, f"empty sentence (no tokens in column '{tokens_col}')")
                    continue
                if tags is None or len(words) != len(tags):
                    bad.bad(
                        i,
                        f"{len(words)} tokens but {0 if tags is None else len(tags)} tags in column "
                        f"'{tags_col}' (one tag per token is needed)",
                    )
                    continue
                if any(not isinstance(word, str) or not word for word in words):
                    bad.bad(i, f"a token in column '{tokens_col}' is empty or not text ({words!r})")
                    continue
                named = [names[t] if names is not None and isinstance(t, int) else str(t) for t in tags]
                unknown = next(((pos, tag) for pos, tag in enumerate(named) if tag not in index), None)
                if unknown is not None:
                    bad.bad(
                        i,
                        f"tag {unknown[1]!r} (token {unknown[0]}, {words[unknown[0]]!r}) is not in the label "
                        f"set {labels}; set data.label_names to change it",
                    )
                    continue
                keep.append(i)
                tag_ids.append([index[tag] for tag in named])
            if bad.report():
                reports.append(bad.report())
            ds = ds.select(keep) if len(keep) < len(ds) else ds
            enc = processor(
                [list(words) for words in ds[tokens_col]],
                is_split_into_words=True,
                truncation=True,
                max_length=recipe.data.max_length,
            )
            aligned, truncated = [], 0
            for row, tags in enumerate(tag_ids):
                word_ids = enc.word_ids(row)
                aligned.append(align_labels(word_ids, tags, continuation, recipe.data.label_all_subtokens))
                seen = [w for w in word_ids if w is not None]
                truncated += bool(seen) and seen[-1] < len(tags) - 1
            if truncated:
                reports.append(
                    f"{truncated} {split} sentence(s) are longer than data.max_length="
                    f"{recipe.data.max_length} sub-word tokens; their last words are cut off"
                )
            columns = {key: list(values) for key, values in enc.items()}
            columns["labels"] = aligned
            columns["length"] = [len(ids) for ids in columns["input_ids"]]
            splits[split] = datasets.Dataset.from_dict(columns)
        return splits, reports

    def collator(self, processor: Any, recipe: Recipe, train: bool) -> Any:
        from transformers import DataCollatorForTokenClassification

        return without_length(
            DataCollatorForTokenClassification(
                processor, label_pad_token_id=IGNORE, pad_to_multiple_of=pad_multiple(recipe.train.mixed_precision)
            )
        )

    def build_model(self, recipe: Recipe, labels: list[str]) -> Any:
        from transformers import AutoConfig, AutoModelForTokenClassification

        from hftl.models.pretrained import label_config, load_pretrained

        m = recipe.model
        label_args = label_config(labels)
        if not m.pretrained:  # the same architecture with random weights (the from-scratch baseline)
            config = load_pretrained(
                AutoConfig,
                m.checkpoint,
                revision=m.revision,
                trust_remote_code=m.trust_remote_code,
                what="config",
                **label_args,
            )
            return AutoModelForTokenClassification.from_config(config, trust_remote_code=m.trust_remote_code)
        return load_pretrained(
            AutoModelForTokenClassification,
            m.checkpoint,
            revision=m.revision,
            trust_remote_code=m.trust_remote_code,
            **label_args,
        )

    def plan(self, model: Any, recipe: Recipe, steps_per_epoch: int, total_steps: int) -> Plan:
        from hftl.strategies.plan import plan_model

        return plan_model(model, recipe, steps_per_epoch, total_steps)

    def predictions(self, outputs: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        return argmax_predictions(outputs, batch)

    def compute_metrics(
        self, predictions: torch.Tensor, references: torch.Tensor, labels: list[str]
    ) -> dict[str, float]:
        """Entity-level precision / recall / F1 and tag accuracy over the labelled positions."""
        scores = seqeval_scores(predictions, references, labels)
        return {key: scores[key] for key in ("precision", "recall", "f1", "accuracy")}

    def class_report(self, predictions: torch.Tensor, references: torch.Tensor, labels: list[str]) -> dict[str, Any]:
        """Per entity type (seqeval: whole spans), as ``per_class``."""
        per_type = seqeval_scores(predictions, references, labels)["per_type"]
        return {
            "per_class": {
                kind: {"precision": s["precision"], "recall": s["recall"], "f1": s["f1"], "support": s["number"]}
                for kind, s in per_type.items()
            }
        }

    def load_trained(self, run_dir: Any) -> tuple[Any, Any]:
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        return AutoModelForTokenClassification.from_pretrained(str(run_dir)).eval(), AutoTokenizer.from_pretrained(
            str(run_dir)
        )

    def predict(self, run_dir: Any, inputs: list[Any], top_k: int) -> list[list[dict[str, Any]]]:
        """The entities found in each text, as ``TYPE:words`` with the mean score of their sub-words."""
        from transformers import pipeline

        pipe = pipeline("token-classification", model=str(run_dir), aggregation_strategy="first")
        return [
            [{"label": f"{e['entity_group']}:{e['word']}", "score": float(e["score"])} for e in out]
            or [{"label": "(no entities)", "score": 1.0}]
            for out in pipe(inputs)
        ]


def seqeval_scores(predictions: torch.Tensor, references: torch.Tensor, labels: list[str]) -> dict[str, Any]:
    """hftl's seqeval module on the labelled positions (-100 dropped) of gathered tag ids."""
    from hftl.metrics import load_metric

    pred_tags, ref_tags = [], []
    for pred_row, ref_row in zip(predictions.tolist(), references.tolist()):
        kept = [(p, r) for p, r in zip(pred_row, ref_row) if r != IGNORE]
        pred_tags.append([labels[p] for p, _ in kept])
        ref_tags.append([labels[r] for _, r in kept])
    return load_metric("hftl_seqeval").compute(predictions=pred_tags, references=ref_tags)


TASKS.register("token-classification")(TokenClassification())
