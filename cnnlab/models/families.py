"""Model families: one parametric builder each, emitting a layer list, plus named presets.

A spec `{family: cnn, preset: tiny, hidden: [64]}` starts from the preset's arguments and
overrides them key by key. Every family has a `default` preset (used when `preset` is left
out) and a `tiny` one for tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from cnnlab.hyper import IN_STATE
from cnnlab.registry import Registry

Norm = Literal["batch", "group", "layer", "none"]
RawLayers = list[Any]  # a layer list as a user would write it


class FamilyArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Family:
    Args: type[FamilyArgs]
    presets: dict[str, dict[str, Any]]
    layers: Callable[[Any], RawLayers]
    about: str


FAMILIES: Registry[Family] = Registry("model family")


def norm_layer(norm: str, groups: int) -> list:
    """The layer list item for a normalisation choice (none: no layer)."""
    return {
        "batch": ["batch_norm"],
        "group": [{"group_norm": groups}],
        "layer": ["layer_norm"],
        "none": [],
    }[norm]


class MlpArgs(FamilyArgs):
    hidden: tuple[PositiveInt, ...] = (256, 128)
    activation: Literal["relu", "gelu", "silu", "tanh", "sigmoid"] = "relu"
    norm: Literal["batch", "layer", "none"] = "none"
    # Whether there is dropout shows in the layers built; its rate is a number (IN_STATE).
    dropout: float = Field(0.0, ge=0, lt=1, json_schema_extra=IN_STATE)


def mlp_layers(args: MlpArgs) -> RawLayers:
    layers: RawLayers = ["flatten"]
    for width in args.hidden:
        layers += [{"dense": width}, *norm_layer(args.norm, 1), args.activation]
        layers += [{"dropout": args.dropout}] if args.dropout else []
    return layers + ["dense"]


FAMILIES.register("mlp")(
    Family(
        MlpArgs,
        {"default": {}, "tiny": {"hidden": [32]}},
        mlp_layers,
        "flatten, then dense layers of the `hidden` widths, then dense to the classes",
    )
)


class CnnArgs(FamilyArgs):
    widths: tuple[PositiveInt, ...] = (32, 64)  # one conv + activation + 2x2 max pool each
    kernel: PositiveInt = 3
    hidden: tuple[PositiveInt, ...] = (128,)  # dense layers before the classifier
    norm: Norm = "none"  # after each conv
    groups: PositiveInt = 8  # for norm: group
    dropout: float = Field(0.0, ge=0, lt=1, json_schema_extra=IN_STATE)  # after each hidden dense


def cnn_layers(args: CnnArgs) -> RawLayers:
    layers: RawLayers = []
    for width in args.widths:
        conv = {"features": width, "kernel": args.kernel, "bias": args.norm == "none"}
        layers += [{"conv": conv}, *norm_layer(args.norm, args.groups), "relu", {"max_pool": 2}]
    layers.append("flatten")
    for width in args.hidden:
        layers += [{"dense": width}, "relu"]
        layers += [{"dropout": args.dropout}] if args.dropout else []
    return layers + ["dense"]


FAMILIES.register("cnn")(
    Family(
        CnnArgs,
        {"default": {}, "tiny": {"widths": [8, 16], "hidden": [32]}},
        cnn_layers,
        "conv-relu-maxpool stages, flatten, dense layers (default: the classic two-conv net)",
    )
)


class ResnetArgs(FamilyArgs):
    stem_width: PositiveInt = 64
    widths: tuple[PositiveInt, ...] = (64, 128, 256)  # one per stage
    blocks: PositiveInt | tuple[PositiveInt, ...] = 1  # residual blocks per stage
    strides: tuple[PositiveInt, ...] = (1, 2, 2)  # of each stage's first block
    kernel: PositiveInt = 3
    norm: Norm = "group"
    groups: PositiveInt = 8  # for norm: group

    @model_validator(mode="after")
    def _stages_agree(self):
        blocks = (
            self.blocks if isinstance(self.blocks, tuple) else (self.blocks,) * len(self.widths)
        )
        if not len(self.widths) == len(self.strides) == len(blocks):
            raise ValueError(
                f"widths ({len(self.widths)}), strides ({len(self.strides)}) and blocks "
                f"({len(blocks)}) must give one value per stage"
            )
        return self

    def stage_blocks(self) -> tuple[int, ...]:
        return self.blocks if isinstance(self.blocks, tuple) else (self.blocks,) * len(self.widths)


def resnet_layers(args: ResnetArgs) -> RawLayers:
    norm = norm_layer(args.norm, args.groups)
    bias = args.norm == "none"  # a norm's shift makes a conv bias redundant

    def conv(width: int, stride: int = 1) -> dict:
        return {"conv": {"features": width, "kernel": args.kernel, "stride": stride, "bias": bias}}

    layers: RawLayers = [conv(args.stem_width), *norm, "relu"]
    for width, stride, count in zip(args.widths, args.strides, args.stage_blocks(), strict=True):
        for index in range(count):
            body = [conv(width, stride if index == 0 else 1), *norm, "relu", conv(width), *norm]
            layers += [{"residual": body}, "relu"]
    return layers + ["global_avg_pool", "dense"]


FAMILIES.register("resnet")(
    Family(
        ResnetArgs,
        {
            "default": {},
            "tiny": {"stem_width": 8, "widths": [8, 16], "strides": [1, 2], "groups": 2},
            # the CIFAR-style ResNet-18: 11.2 M parameters on 32x32x3
            "resnet18": {
                "widths": [64, 128, 256, 512],
                "blocks": [2, 2, 2, 2],
                "strides": [1, 2, 2, 2],
                "norm": "batch",
            },
        },
        resnet_layers,
        "conv stem, stages of basic residual blocks (conv-norm-relu-conv-norm + shortcut), "
        "global average pool, dense",
    )
)
