"""Layer-group mappers, table-driven over every registered model type with tiny random models."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BeitConfig,
    BertConfig,
    CamembertConfig,
    ConvNextConfig,
    ConvNextV2Config,
    Data2VecVisionConfig,
    DeiTConfig,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    Dinov2Config,
    ElectraConfig,
    ResNetConfig,
    RobertaConfig,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
    TimmWrapperModel,
    ViTConfig,
    XLMRobertaConfig,
)

from hftl.config.errors import HftlError
from hftl.models.layers import LAYER_MAPPERS, describe_groups, map_layer_groups, mapper_spec
from tests import tiny_models
from tests.tiny_architectures import task_class, tiny_config
from tests.tiny_models import TEXT, bert_config, distilbert_config

VISION = {**tiny_models.VISION, "num_labels": 3}  # for every vision family below
CNN = {**tiny_models.CNN, "num_labels": 3}
TEXT_BODY = ["embeddings", "layer.0", "layer.1"]
CLASSIFIER = {"classifier.weight", "classifier.bias"}
CANINE_BODY = ["embeddings", "initial_char_encoder", "chars_to_molecules", "encoder.layer.0", "encoder.layer.1"]


def bert(**kw: object) -> BertConfig:
    return bert_config(**kw)


def timm(arch: str, head: bool = True, **model_args: object) -> nn.Module:
    config = TimmWrapperConfig(architecture=arch, num_labels=3, model_args=model_args or None)
    return TimmWrapperForImageClassification(config) if head else TimmWrapperModel(config)


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[], nn.Module]
    groups: list[str]  # expected group names, input first
    head: set[str]  # expected head parameter names; empty for a bare backbone


def pooled_classifier(config) -> nn.Module:
    """hftl's mean-pooled text classifier on a body (the BERT pooler is dropped: it is not read)."""
    from hftl.models.pooled_model import PooledClassifierConfig, PooledModelForSequenceClassification

    return PooledModelForSequenceClassification(PooledClassifierConfig(body=config.to_dict(), num_labels=2))


def stages_classifier(arch: str) -> nn.Module:
    """hftl's all-stages image classifier (model.pooling: stages) on a timm body."""
    from hftl.models.stages_model import StagesClassifierConfig, StagesModelForImageClassification

    body = timm(arch, head=False)
    config = StagesClassifierConfig.for_timm(body.timm_model, body.config, num_labels=3)
    return StagesModelForImageClassification(config, timm_model=body.timm_model)


def _timm_head(*modules: str) -> set[str]:
    return {f"timm_model.{m}.{p}" for m in modules for p in ("weight", "bias")}


CASES = [
    Case(
        "bert-seq",
        lambda: AutoModelForSequenceClassification.from_config(bert()),
        TEXT_BODY + ["pooler", "head"],
        CLASSIFIER,
    ),
    Case("bert-token", lambda: AutoModelForTokenClassification.from_config(bert()), TEXT_BODY + ["head"], CLASSIFIER),
    Case(
        "bert-qa",
        lambda: AutoModelForQuestionAnswering.from_config(bert()),
        TEXT_BODY + ["head"],
        {"qa_outputs.weight", "qa_outputs.bias"},
    ),
    Case("bert-bare", lambda: AutoModel.from_config(bert()), TEXT_BODY + ["pooler"], set()),
    Case("bert-mean-pooled", lambda: pooled_classifier(bert()), TEXT_BODY + ["head"], CLASSIFIER),
    Case(
        "roberta-seq",
        lambda: AutoModelForSequenceClassification.from_config(RobertaConfig(**TEXT)),
        TEXT_BODY + ["head"],
        {f"classifier.{m}.{p}" for m in ("dense", "out_proj") for p in ("weight", "bias")},
    ),
    Case(
        "xlm-roberta-token",
        lambda: AutoModelForTokenClassification.from_config(XLMRobertaConfig(**TEXT)),
        TEXT_BODY + ["head"],
        CLASSIFIER,
    ),
    # CANINE: its sequence head reads the molecule encoder's pooler, its token head the final character encoder
    Case(
        "canine-seq",
        lambda: task_class("canine", "sequence")(tiny_config("canine")),
        CANINE_BODY + ["pooler", "head"],
        CLASSIFIER,
    ),
    Case(
        "canine-token",
        lambda: task_class("canine", "token")(tiny_config("canine")),
        CANINE_BODY + ["neck", "final_char_encoder", "head"],
        CLASSIFIER,
    ),
    Case("camembert-bare", lambda: AutoModel.from_config(CamembertConfig(**TEXT)), TEXT_BODY + ["pooler"], set()),
    Case(
        "electra-token",
        lambda: AutoModelForTokenClassification.from_config(ElectraConfig(**TEXT, embedding_size=16)),
        TEXT_BODY + ["head"],
        CLASSIFIER,
    ),
    Case(
        "distilbert-seq",
        lambda: AutoModelForSequenceClassification.from_config(distilbert_config()),
        TEXT_BODY + ["head"],
        CLASSIFIER | {"pre_classifier.weight", "pre_classifier.bias"},
    ),
    Case(
        "vit-image",
        lambda: AutoModelForImageClassification.from_config(ViTConfig(**VISION)),
        TEXT_BODY + ["neck", "head"],
        CLASSIFIER,
    ),
    Case("vit-bare", lambda: AutoModel.from_config(ViTConfig(**VISION)), TEXT_BODY + ["neck"], set()),
    # AutoModelForImageClassification.from_config(DeiTConfig()) raises a TypeError in transformers 5.23.
    Case(
        "deit-image", lambda: DeiTForImageClassification(DeiTConfig(**VISION)), TEXT_BODY + ["neck", "head"], CLASSIFIER
    ),
    Case(
        "deit-teacher",
        lambda: DeiTForImageClassificationWithTeacher(DeiTConfig(**VISION)),
        TEXT_BODY + ["neck", "head"],
        {f"{c}_classifier.{p}" for c in ("cls", "distillation") for p in ("weight", "bias")},
    ),
    Case(
        "beit-image",
        lambda: AutoModelForImageClassification.from_config(BeitConfig(**VISION)),
        TEXT_BODY + ["pooler", "head"],
        CLASSIFIER,
    ),
    Case(
        "beit-shared-bias",
        lambda: AutoModel.from_config(
            BeitConfig(**VISION, use_mask_token=True, use_shared_relative_position_bias=True, use_mean_pooling=False)
        ),
        TEXT_BODY + ["neck"],
        set(),
    ),
    Case(
        "dinov2-image",
        lambda: AutoModelForImageClassification.from_config(Dinov2Config(**VISION)),
        TEXT_BODY + ["neck", "head"],
        CLASSIFIER,
    ),
    Case(
        "data2vec-vision-image",
        lambda: AutoModelForImageClassification.from_config(Data2VecVisionConfig(**VISION)),
        TEXT_BODY + ["pooler", "head"],
        CLASSIFIER,
    ),
    Case(
        "resnet-image",
        lambda: AutoModelForImageClassification.from_config(ResNetConfig(**CNN, embedding_size=8, layer_type="basic")),
        ["stem", "stage.0", "stage.1", "head"],
        {"classifier.1.weight", "classifier.1.bias"},
    ),
    Case(
        "resnet-bare",
        lambda: AutoModel.from_config(ResNetConfig(**CNN, embedding_size=8)),
        ["stem", "stage.0", "stage.1"],
        set(),
    ),
    Case(
        "convnext-image",
        lambda: AutoModelForImageClassification.from_config(ConvNextConfig(**CNN, num_stages=2)),
        ["stem", "stage.0", "stage.1", "neck", "head"],
        CLASSIFIER,
    ),
    Case(
        "convnextv2-image",
        lambda: AutoModelForImageClassification.from_config(ConvNextV2Config(**CNN, num_stages=2)),
        ["stem", "stage.0", "stage.1", "neck", "head"],
        CLASSIFIER,
    ),
    Case(
        "timm-efficientnet",
        lambda: timm("efficientnet_lite0"),
        ["stem", *(f"blocks.{i}" for i in range(7)), "neck", "head"],
        _timm_head("classifier"),
    ),
    Case(
        "timm-efficientnet-bare",
        lambda: timm("efficientnet_lite0", head=False),
        ["stem", *(f"blocks.{i}" for i in range(7)), "neck"],
        set(),
    ),
    Case(
        "stages-efficientnet",
        lambda: stages_classifier("efficientnet_lite0"),
        ["stem", *(f"blocks.{i}" for i in range(7)), "neck", "head"],
        CLASSIFIER,
    ),
    Case(
        "stages-resnet",
        lambda: stages_classifier("resnet18"),
        ["stem", "layer1", "layer2", "layer3", "layer4", "head"],
        CLASSIFIER,
    ),
    Case(
        "timm-resnet",
        lambda: timm("resnet18"),
        ["stem", "layer1", "layer2", "layer3", "layer4", "head"],
        _timm_head("fc"),
    ),
    Case(
        "timm-vit",
        lambda: timm("vit_tiny_patch16_224", depth=2, embed_dim=32, num_heads=2, img_size=32),
        ["stem", "blocks.0", "blocks.1", "neck", "head"],
        _timm_head("head"),
    ),
    Case(
        "timm-convnext",
        lambda: timm("convnext_atto", depths=(1, 1, 1, 1), dims=(8, 8, 8, 8)),
        ["stem", "stages.0", "stages.1", "stages.2", "stages.3", "neck", "head"],
        _timm_head("head.fc"),
    ),
]
IDS = [case.id for case in CASES]


@cache
def model_of(case_id: str) -> nn.Module:
    torch.manual_seed(0)
    return next(case for case in CASES if case.id == case_id).build()


def params(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_parameters()]


def under(name: str, modules: tuple[str, ...]) -> bool:
    return any(m == "" or name == m or name.startswith(m + ".") for m in modules)


def test_every_mapper_is_exercised() -> None:
    covered = {model_of(case.id).config.model_type for case in CASES}
    assert set(LAYER_MAPPERS.names()) <= covered


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_parameter_lands_in_exactly_one_group_in_model_order(case: Case) -> None:
    model = model_of(case.id)
    groups = map_layer_groups(model)
    names = params(model)
    assert sorted(p for g in groups for p in g.params) == sorted(names)
    position = {name: i for i, name in enumerate(names)}
    for group in groups:
        assert group.params and list(group.params) == sorted(group.params, key=position.__getitem__)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_groups_run_from_input_to_head(case: Case) -> None:
    groups = map_layer_groups(model_of(case.id))
    assert [g.name for g in groups] == case.groups
    assert [g.is_head for g in groups] == [False] * (len(groups) - 1) + [bool(case.head)]
    if case.head:
        assert set(groups[-1].params) == case.head


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_mapper_patterns_do_not_overlap(case: Case) -> None:
    model = model_of(case.id)
    _, spec = mapper_spec(model)
    for name in params(model):
        hits = [group for group, patterns in spec if any(re.search(p, name) for p in patterns)]
        assert len(hits) == 1, (name, hits)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_group_modules_put_their_dropout_and_batchnorm_in_eval_mode(case: Case) -> None:
    model = model_of(case.id)
    groups = map_layer_groups(model)
    stateful = [n for n, m in model.named_modules() if isinstance(m, (nn.Dropout, nn.modules.batchnorm._BatchNorm))]
    assert stateful or case.id.startswith("convnext")  # ConvNeXt has neither
    for name in stateful:
        assert sum(under(name, g.modules) for g in groups) == 1, name
    for group in groups:
        for module in group.modules:  # a listed module holds nothing of another group
            assert {f"{module}.{p}".lstrip(".") for p, _ in model.get_submodule(module).named_parameters()} <= set(
                group.params
            )
        model.train()
        for module in group.modules:
            model.get_submodule(module).eval()
        assert {n for n in stateful if not model.get_submodule(n).training} == {
            n for n in stateful if under(n, group.modules)
        }
    model.train()


def test_many_layers_sort_numerically() -> None:
    model = AutoModel.from_config(bert(hidden_size=8, num_hidden_layers=12, intermediate_size=8))
    groups = map_layer_groups(model)
    assert [g.name for g in groups] == ["embeddings", *(f"layer.{i}" for i in range(12)), "pooler"]
    layer_1 = next(g for g in groups if g.name == "layer.1")
    assert all(p.startswith("encoder.layer.1.") for p in layer_1.params)


def test_shared_and_special_embeddings_are_depth_zero() -> None:
    names = set(map_layer_groups(model_of("beit-shared-bias"))[0].params)
    assert {
        "embeddings.cls_token",
        "embeddings.mask_token",
        "shared_position_bias.relative_position_bias_table",
    } <= names
    deit = set(map_layer_groups(model_of("deit-image"))[0].params)
    assert {
        "deit.embeddings.cls_token",
        "deit.embeddings.distillation_token",
        "deit.embeddings.position_embeddings",
    } <= deit
    assert "electra.embeddings_project.weight" in map_layer_groups(model_of("electra-token"))[0].params


class Mystery(nn.Module):
    def __init__(self, model_type: str = "mystery_lm") -> None:
        super().__init__()
        self.config = SimpleNamespace(model_type=model_type)
        self.embed = nn.Embedding(10, 4)
        self.block = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1))
        self.drop = nn.Sequential(nn.Dropout(0.1), nn.Sequential(nn.Dropout(0.1)))  # parameter-free, feeds score
        self.score = nn.Linear(4, 2)


def test_a_model_without_blocks_is_refused_with_its_modules_and_a_working_block() -> None:
    with pytest.raises(HftlError) as err:
        map_layer_groups(Mystery())
    text = str(err.value)
    assert "'mystery_lm'" in text and "no list of repeated blocks" in text
    assert "embed (40), block (20), drop (0), score (10)" in text  # the model's own top-level modules
    block = yaml.safe_load(text[text.index("  strategy:") :])["strategy"]["layer_groups"]
    groups = map_layer_groups(Mystery(), custom=[(g["name"], g["patterns"]) for g in block])
    assert [g.name for g in groups] == ["embed", "block", "score"]
    assert sorted(p for g in groups for p in g.params) == sorted(params(Mystery()))


def test_custom_groups_describe_an_unmapped_model() -> None:
    model = Mystery()
    groups = map_layer_groups(model, custom=[("embed", [r"^embed\."]), ("body", [r"^block\."]), ("out", ["score"])])
    assert [(g.name, g.is_head) for g in groups] == [("embed", False), ("body", False), ("out", True)]
    assert groups[1].params == ("block.0.weight", "block.0.bias") and groups[1].modules == ("block",)
    assert groups[2].modules == ("drop", "score")
    as_mapping = map_layer_groups(model, custom={"embed": "embed", "body": ["block"], "out": ["score"]})
    assert as_mapping == groups


def test_custom_groups_override_a_mapper() -> None:
    model = model_of("bert-seq")
    groups = map_layer_groups(model, custom=[("backbone", [r"^bert\."]), ("classifier", ["^classifier"])])
    assert [len(g.params) for g in groups] == [len(params(model)) - 2, 2] and groups[-1].is_head


@pytest.mark.parametrize(
    "custom, message",
    [
        (
            [("embed", ["^embed"]), ("nothing", ["^encoder"]), ("out", ["."])],
            r"'\^encoder' of group 'nothing' matches no",
        ),
        ([("embed", ["^embed["])], r"'\^embed\[' of group 'embed' is not a valid regex"),
        ([("all", ["."]), ("out", ["score"])], r"group\(s\) out get no parameter"),
        ([("a", ["embed"]), ("a", ["score"])], "'a' is given twice"),
        (
            [("embed", ["^embed"]), ("out", ["^score"])],
            r"belong to no layer group in strategy.layer_groups: block.0.weight",
        ),
        ([], "is empty"),
    ],
)
def test_bad_custom_groups_are_named(custom: list, message: str) -> None:
    with pytest.raises(HftlError, match=message):
        map_layer_groups(Mystery(), custom=custom)


def test_unassigned_parameter_is_named_with_the_mapper() -> None:
    model = pooled_classifier(bert())
    model.extra_scale = nn.Parameter(torch.ones(1))
    with pytest.raises(
        HftlError,
        match=r"(?s)1 parameter\(s\) of this 'hftl-pooled-classifier' model belong to no layer group in the "
        r"hftl-pooled-classifier mapper: extra_scale\. .*strategy:\n    layer_groups:",
    ):
        map_layer_groups(model)


def test_a_new_parameter_beside_the_backbone_is_head() -> None:
    model = AutoModelForTokenClassification.from_config(bert())
    model.extra_scale = nn.Parameter(torch.ones(1))
    assert "extra_scale" in map_layer_groups(model)[-1].params


def test_peft_lora_params_join_their_groups_and_real_names_are_kept() -> None:
    from peft import LoraConfig, get_peft_model

    base = AutoModelForSequenceClassification.from_config(bert())
    expected = [g.name for g in map_layer_groups(base)]
    model = get_peft_model(
        base, LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"], modules_to_save=["classifier"])
    )
    groups = map_layer_groups(model)
    assert [g.name for g in groups] == expected
    assert sorted(p for g in groups for p in g.params) == sorted(params(model))
    by_name = {g.name: g for g in groups}
    for i in range(2):
        lora = [p for p in by_name[f"layer.{i}"].params if ".lora_" in p]
        assert len(lora) == 4 and all(p.startswith(f"base_model.model.bert.encoder.layer.{i}.") for p in lora)
    assert set(by_name["head"].params) == {
        f"base_model.model.classifier.{copy}.{p}"
        for p in ("weight", "bias")
        for copy in ("original_module", "modules_to_save.default")
    }
    assert by_name["head"].modules == ("base_model.model.dropout", "base_model.model.classifier")
    assert by_name["layer.0"].modules == ("base_model.model.bert.encoder.layer.0",)  # holds the lora_dropout


class Fusion(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.vision = AutoModel.from_config(ViTConfig(**VISION))
        self.text = AutoModel.from_config(bert())
        self.head = nn.Linear(64, 2)


def test_prefix_maps_a_fusion_tower_with_full_names() -> None:
    fusion = Fusion()
    groups = map_layer_groups(fusion.vision, prefix="vision.") + map_layer_groups(fusion.text, prefix="text.")
    assert [g.name for g in groups][:4] == ["vision.embeddings", "vision.layer.0", "vision.layer.1", "vision.neck"]
    assert [g.name for g in groups][4:] == ["text.embeddings", "text.layer.0", "text.layer.1", "text.pooler"]
    assert sorted(p for g in groups for p in g.params) == sorted(p for p in params(fusion) if not p.startswith("head."))
    module_names = {name for name, _ in fusion.named_modules()}
    assert all(m in module_names for g in groups for m in g.modules)
    assert groups[0].modules == ("vision.embeddings",)


def test_describe_groups_counts_parameters() -> None:
    model = model_of("bert-seq")
    rows = describe_groups(map_layer_groups(model), model)
    assert [r["depth"] for r in rows] == list(range(5)) and rows[-1] == {
        "name": "head",
        "depth": 4,
        "n_params": 32 * 2 + 2,
        "is_head": True,
    }
    assert sum(r["n_params"] for r in rows) == sum(p.numel() for p in model.parameters())
