"""Text classification (sentiment, topic, NLI, ...): one label, a set of labels, or a number per text or text pair.

``data.problem_type`` says which (:mod:`hftl.tasks.labels`); ``data.columns.text_pair`` names a second text
column for pairs (premise / hypothesis, question / answer, title / body): both go through the tokenizer
together, as ``tokenizer(text, text_pair)`` joins them with the checkpoint's separator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hftl.config.errors import RecipeError
from hftl.tasks import TASKS, CardInfo
from hftl.tasks import labels as label_kinds
from hftl.tasks.classifier import SingleCheckpointClassifier
from hftl.tasks.common import (
    BadExamples,
    add_columns,
    check_columns_section,
    column,
    pad_multiple,
    pipeline_predict,
    require_checkpoint,
    select_valid,
    text_problem,
    without_length,
)

if TYPE_CHECKING:
    import datasets

    from hftl.config.schema import ModelSection, Recipe


class TextClassification(SingleCheckpointClassifier):
    name = "text-classification"
    roles = {"text": "text", "text_pair": None, "label": "label"}
    required_roles = ("text", "label")
    metric = "accuracy"
    problem_types = ("single_label", "multi_label", "regression")
    towers = ()
    peft_task_type = "SEQ_CLS"
    card = CardInfo(
        "text-classification",
        '"A warm, funny and very smart film."',
        "AutoPeftModelForSequenceClassification",
        pair_input='{"text": "A warm, funny and very smart film.", "text_pair": "The critics loved it."}',
    )

    def check(self, recipe: Recipe) -> None:
        require_checkpoint(recipe, "e.g. all-MiniLM-L6-v2 (offline) or bert-base-uncased (Hub).", init_from=True)
        if recipe.model.pooling == "stages":
            raise RecipeError(
                recipe.source_file,
                "model.pooling",
                "'stages' reads the stages of an image model; a text classifier pools token states",
                "stages",
                hint="Use auto, pooler, cls, mean or max.",
            )
        check_columns_section(recipe, self.roles)
        label_kinds.check_problem_type(recipe, self.problem_types)

    def load_processor(self, recipe: Recipe) -> Any:
        from transformers import AutoTokenizer

        from hftl.models.pretrained import load_pretrained, model_source

        return load_pretrained(
            AutoTokenizer,
            model_source(recipe.model, recipe.source_file),
            revision=recipe.model.revision,
            trust_remote_code=recipe.model.trust_remote_code,
            what="tokenizer",
        )

    def encode(
        self, splits: datasets.DatasetDict, processor: Any, recipe: Recipe, labels: list[str]
    ) -> tuple[datasets.DatasetDict, list[str]]:
        """Tokenize without padding (the collator pads each batch to its own longest text)."""
        data = recipe.data
        text_col, pair_col = column(data, self.roles, "text"), column(data, self.roles, "text_pair")
        label_col = self.label_column(data)
        to_id = label_kinds.target_encoder(splits, data.problem_type, label_col, labels)
        reports = []
        for split in list(splits):
            ds = splits[split]
            pairs = ds[pair_col] if pair_col else [None] * len(ds)
            rows = (
                (text_problem(text, text_col) or (pair_col and text_problem(pair, pair_col)) or None, raw)
                for text, pair, raw in zip(ds[text_col], pairs, ds[label_col])
            )
            bad = BadExamples(data.on_error, split, recipe.source_file)
            ds, _, ids, report = select_valid(ds, bad, rows, to_id, labels, data.problem_type)
            reports += [report] if report else []
            ds = add_columns(ds, {"labels": ids})

            def tokenize(batch: dict[str, list]) -> dict[str, list]:
                args = (batch[text_col], batch[pair_col]) if pair_col else (batch[text_col],)
                out = processor(*args, truncation=True, max_length=recipe.data.max_length)
                out["length"] = [len(x) for x in out["input_ids"]]
                return out

            keep_cols = {"labels"}
            splits[split] = ds.map(
                tokenize,
                batched=True,
                remove_columns=[c for c in ds.column_names if c not in keep_cols],
                desc=f"Tokenizing {split}",
            )
        return splits, reports

    def collator(self, processor: Any, recipe: Recipe, train: bool) -> Any:
        from transformers import DataCollatorWithPadding

        multiple = pad_multiple(recipe.train.mixed_precision)
        return without_length(DataCollatorWithPadding(processor, pad_to_multiple_of=multiple))

    def build_model(self, recipe: Recipe, labels: list[str]) -> Any:
        from transformers import AutoModelForSequenceClassification

        from hftl.models import pooled_model  # noqa: F401  (registers the class: init_from a pooled run)
        from hftl.models.pretrained import label_config, load_body, load_model_for_labels, model_source

        pooling = resolve_pooling(recipe.model)
        if pooling == "pooler":  # the checkpoint's own head class (or an earlier run's, with init_from)
            return load_model_for_labels(
                AutoModelForSequenceClassification,
                recipe.model,
                labels,
                recipe.data.problem_type,
                recipe.strategy.layer_groups,
                recipe.source_file,
            )
        from hftl.models.pooled_model import PooledClassifierConfig, PooledModelForSequenceClassification
        from hftl.models.pretrained import checkpoint_normalizes
        from hftl.strategies import unit_features

        body = load_body(recipe.model, model_source(recipe.model, recipe.source_file), recipe.model.revision)
        normalize = unit_features(recipe) and checkpoint_normalizes(recipe.model.checkpoint, recipe.model.revision)
        config = PooledClassifierConfig(
            body=body.config.to_dict(),
            pooling=pooling,
            normalize=normalize,
            **label_config(labels, recipe.data.problem_type),
        )
        return PooledModelForSequenceClassification(config, body=body)

    def load_trained(self, run_dir: Any) -> tuple[Any, Any]:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from hftl.models import pooled_model  # noqa: F401  (registers the pooled classifier)

        return AutoModelForSequenceClassification.from_pretrained(str(run_dir)).eval(), AutoTokenizer.from_pretrained(
            str(run_dir)
        )

    def predict(self, run_dir: Any, inputs: list[Any], top_k: int) -> list[list[dict[str, Any]]]:
        from hftl.models import pooled_model  # noqa: F401  (registers the pooled classifier with transformers)

        return pipeline_predict(run_dir, "text-classification", inputs, top_k)


def resolve_pooling(model: ModelSection) -> str:
    """``model.pooling``, with ``auto`` resolved: the checkpoint's own pooling (sentence-transformers), else
    ``pooler`` (the checkpoint's head class). An ``init_from`` run keeps the head class it was trained with."""
    from hftl.models.pretrained import checkpoint_pooling

    if model.pooling != "auto":
        return model.pooling
    if model.init_from:
        return "pooler"
    return checkpoint_pooling(model.checkpoint, model.revision) or "pooler"


TASKS.register("text-classification")(TextClassification())
