"""Text classification (sentiment, topic, ...): one label per text, or per text pair."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hftl.config.errors import RecipeError
from hftl.tasks import TASKS, CardInfo
from hftl.tasks.common import (
    argmax_predictions,
    check_columns_section,
    classification_labels,
    classification_metrics,
    column,
    label_encoder,
    load_splits,
    pipeline_predict,
    select_valid,
    text_problem,
    without_length,
)

if TYPE_CHECKING:
    import datasets

    from hftl.config.schema import Recipe
    from hftl.strategies.plan import Plan


class TextClassification:
    name = "text-classification"
    roles = {"text": "text", "text_pair": None, "label": "label"}
    required_roles = ("text", "label")
    metric = "accuracy"
    towers = ()
    peft_task_type = "SEQ_CLS"
    card = CardInfo(
        "text-classification", '"A warm, funny and very smart film."', "AutoPeftModelForSequenceClassification"
    )

    def check(self, recipe: Recipe) -> None:
        if not (recipe.model.checkpoint or recipe.model.init_from):
            raise RecipeError(
                recipe.source_file,
                "model.checkpoint",
                "is required for text-classification (or model.init_from, an earlier run)",
                hint="e.g. all-MiniLM-L6-v2 (offline) or bert-base-uncased (Hub).",
            )
        check_columns_section(recipe, self.roles)

    def load_splits(self, recipe: Recipe) -> datasets.DatasetDict:
        needed = self.required_roles + (("text_pair",) if column(recipe, self.roles, "text_pair") else ())
        return load_splits(recipe, self.roles, needed)

    def load_processor(self, recipe: Recipe) -> Any:
        from transformers import AutoTokenizer

        from hftl.models.pretrained import load_pretrained, model_source

        return load_pretrained(
            AutoTokenizer,
            model_source(recipe),
            revision=recipe.model.revision,
            trust_remote_code=recipe.model.trust_remote_code,
            what="tokenizer",
        )

    def label_names(self, splits: datasets.DatasetDict, recipe: Recipe) -> list[str]:
        return classification_labels(splits, recipe, column(recipe, self.roles, "label"))

    def encode(
        self, splits: datasets.DatasetDict, processor: Any, recipe: Recipe, labels: list[str]
    ) -> tuple[datasets.DatasetDict, list[str]]:
        """Tokenize without padding (the collator pads each batch to its own longest text)."""
        text_col, pair_col = column(recipe, self.roles, "text"), column(recipe, self.roles, "text_pair")
        label_col = column(recipe, self.roles, "label")
        to_id = label_encoder(splits, label_col, labels)
        reports = []
        for split in list(splits):
            ds = splits[split]
            pairs = ds[pair_col] if pair_col else [None] * len(ds)
            rows = (
                (text_problem(text, text_col) or (pair_col and text_problem(pair, pair_col)) or None, raw)
                for text, pair, raw in zip(ds[text_col], pairs, ds[label_col])
            )
            ds, _, ids, report = select_valid(ds, recipe, split, rows, to_id, labels)
            reports += [report] if report else []
            ds = (
                ds.add_column("labels", ids)
                if "labels" not in ds.column_names
                else ds.remove_columns("labels").add_column("labels", ids)
            )

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

        return without_length(DataCollatorWithPadding(processor, pad_to_multiple_of=None))

    def build_model(self, recipe: Recipe, labels: list[str]) -> Any:
        from transformers import AutoModelForSequenceClassification

        from hftl.models import pooled_model  # noqa: F401  (registers the class: init_from a pooled run)
        from hftl.models.pretrained import label_config, load_body, load_model_for_labels, model_source

        pooling = resolve_pooling(recipe)
        if pooling == "pooler":  # the checkpoint's own head class (or an earlier run's, with init_from)
            return load_model_for_labels(AutoModelForSequenceClassification, recipe, labels)
        from hftl.models.pooled_model import PooledClassifierConfig, PooledModelForSequenceClassification

        body = load_body(recipe, model_source(recipe), recipe.model.revision)
        config = PooledClassifierConfig(body=body.config.to_dict(), pooling=pooling, **label_config(labels))
        return PooledModelForSequenceClassification(config, body=body)

    def plan(self, model: Any, recipe: Recipe, steps_per_epoch: int, total_steps: int) -> Plan:
        from hftl.strategies.plan import plan_model

        return plan_model(model, recipe, steps_per_epoch, total_steps)

    def predictions(self, outputs: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        return argmax_predictions(outputs, batch)

    def compute_metrics(self, predictions: Any, references: Any, labels: list[str]) -> dict[str, float]:
        return classification_metrics(predictions, references)

    def predict(self, run_dir: Any, inputs: list[Any], top_k: int) -> list[list[dict[str, Any]]]:
        from hftl.models import pooled_model  # noqa: F401  (registers the pooled classifier with transformers)

        return pipeline_predict(run_dir, "text-classification", inputs, top_k)


def resolve_pooling(recipe: Recipe) -> str:
    """``model.pooling``, with ``auto`` resolved: the checkpoint's own pooling (sentence-transformers), else
    ``pooler`` (the checkpoint's head class). An ``init_from`` run keeps the head class it was trained with."""
    from hftl.models.pretrained import checkpoint_pooling

    if recipe.model.pooling != "auto":
        return recipe.model.pooling
    if recipe.model.init_from:
        return "pooler"
    return checkpoint_pooling(recipe.model.checkpoint, recipe.model.revision) or "pooler"


TASKS.register("text-classification")(TextClassification())
