"""A layer written in Python, in a layer list: `- {python: my_layers.py:MyConv, args: {...}}`.

`MyConv` is one of two things (the file is loaded as Python models are, see custom.py):

1. An NNX module class, constructed as `MyConv(in_shape=(H, W, C), rngs=nnx.Rngs(...), **args)`
   (`in_shape` is the per-image input shape) and called as `layer(x)` on a (B, ...) batch.
2. Anything with `init(key, in_shape, **args) -> params` (any pytree of arrays) and
   `apply(params, x) -> y` (a class of staticmethods, a namespace or a module).

The output shape is found by running the layer on shapes only, so the layers after it are
checked as usual. A relative file path is looked up next to the YAML file that names it, then
in the current folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax.numpy as jnp
from flax import nnx

from cnnlab.errors import SpecError, UserError
from cnnlab.models.layers import Args, LayerKind, LayerSpec, ShapeMismatch, layer


class PythonLayerArgs(Args):
    target: str  # absolute 'file.py:Name'
    args: dict[str, Any] = {}


def resolve_file(target: str, where: str | None) -> str:
    """'my.py:Name' with the file made absolute: next to `where` ('file.yaml:line'), else cwd."""
    file, sep, name = target.rpartition(":")
    if not sep:
        file, name = target, ""
    path = Path(file).expanduser()
    if not path.is_absolute():
        near = Path(where.rpartition(":")[0]).parent / path if where else None
        path = near if near is not None and near.is_file() else Path.cwd() / path
    return f"{path.resolve()}:{name}" if name else str(path.resolve())


def load_target(target: str) -> Any:
    from cnnlab.models.custom import load_module, split_target

    file, name = split_target(target)
    if name is None:
        raise SpecError(("python",), f"name the layer in the file: '{target}:MyLayer'")
    module = load_module(file)
    if not hasattr(module, name):
        raise SpecError(("python",), f"{file.name} has no '{name}'")
    return getattr(module, name)


def _kind(obj: Any) -> str:
    if isinstance(obj, type) and issubclass(obj, nnx.Module):
        return "nnx"
    if callable(getattr(obj, "init", None)) and callable(getattr(obj, "apply", None)):
        return "functions"
    raise SpecError(
        ("python",),
        f"{type(obj).__name__} is not a layer: expected an nnx.Module subclass, or an object with "
        "init(key, in_shape, **args) and apply(params, x)",
    )


def parse_python_layer(item: Any, loc: tuple) -> LayerSpec:
    """`{python: file.py:Name, args: {...}}` in a layer list, checked before anything is built."""
    from cnnlab.models.custom import _check_args

    for key in item:
        if key not in ("python", "args"):
            raise SpecError(loc + (key,), "a Python layer takes the keys python and args")
    target, args = item["python"], item.get("args") or {}
    if not isinstance(target, str) or not isinstance(args, dict):
        raise SpecError(loc, "write a Python layer as {python: file.py:Name, args: {...}}")
    target = resolve_file(target, getattr(item, "where", {}).get("python"))
    try:
        obj = load_target(target)
        title = target.rpartition("/")[2]
        if _kind(obj) == "nnx":
            _check_args(obj.__init__, 1, ("in_shape", "rngs"), args, title)
        else:
            _check_args(obj.init, 2, (), args, f"{title} init")
    except SpecError as error:
        raise error.within(*loc) from None
    return LayerSpec("python", PythonLayerArgs(target=target, args=args), loc=loc)


class FunctionLayer(nnx.Module):
    """An init/apply pair as an NNX module: its params pytree is one trainable variable."""

    def __init__(self, target: Any, shape: tuple, args: dict, rngs: nnx.Rngs):
        self.apply_fn = target.apply
        self.params = nnx.Param(target.init(rngs.params(), shape, **args))

    def __call__(self, x):
        return self.apply_fn(self.params.value, x)


@layer("python")
class PythonLayer(LayerKind):
    Args = PythonLayerArgs

    def make(self, args, shape, ctx):
        target = load_target(args.target)
        rngs = ctx.rngs if ctx.rngs is not None else nnx.Rngs(0)
        if _kind(target) == "nnx":
            return target(in_shape=tuple(shape), rngs=rngs, **args.args)
        return FunctionLayer(target, tuple(shape), args.args, rngs)

    def output_shape(self, args, shape, ctx):
        def build_and_call():
            return self.make(args, shape, ctx.__class__(ctx.num_classes, ctx.init))(
                jnp.zeros((1, *shape), jnp.float32)
            )

        try:
            out = nnx.eval_shape(build_and_call)
        except (SpecError, UserError):
            raise
        except Exception as error:
            from cnnlab.models.custom import _explain

            file = Path(args.target.rpartition(":")[0])
            raise ShapeMismatch(f"{file.name}: {_explain(error, file)}") from None
        return tuple(out.shape[1:])

    def flops(self, args, shape, out):
        return 0  # unknown: Python code is not counted

    def label(self, args):
        return args.target.rpartition("/")[2]
