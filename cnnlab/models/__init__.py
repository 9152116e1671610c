"""Models: layer lists, named families with presets, and models written in Python.

    spec = parse_model_spec({"family": "cnn", "preset": "tiny"})
    model = build_model(spec, input_shape=(28, 28, 1), num_classes=10)
    params, state = model.init(key)
    logits, state = model.apply(params, state, x, train=True, key=key)

See `spec` for the YAML forms, `layers` for the layer kinds, `families` for the families and
presets, `custom` for the two contracts of Python models.
"""

from cnnlab.models.base import Model, from_nnx
from cnnlab.models.build import (
    LayerRow,
    ModelSummary,
    build_model,
    describe_model,
    layer_outputs,
    render_model_summary,
)
from cnnlab.models.families import FAMILIES
from cnnlab.models.initializers import INITIALIZERS
from cnnlab.models.layers import LAYERS
from cnnlab.models.spec import (
    FamilySpec,
    LayerListSpec,
    ModelSpec,
    PythonModelSpec,
    model_spec_to_dict,
    parse_model_spec,
)

__all__ = [
    "FAMILIES",
    "INITIALIZERS",
    "LAYERS",
    "FamilySpec",
    "LayerListSpec",
    "LayerRow",
    "Model",
    "ModelSpec",
    "ModelSummary",
    "PythonModelSpec",
    "build_model",
    "describe_model",
    "from_nnx",
    "layer_outputs",
    "model_spec_to_dict",
    "parse_model_spec",
    "render_model_summary",
]
