"""Models written in Python, named in an experiment as `{python: file.py:Name, args: {...}}`.

`Name` is one of two things:

1. An NNX module class. cnnlab constructs it as

       Name(in_shape=(height, width, channels), num_classes=N, rngs=nnx.Rngs(seed), **args)

   and calls `module(x)` with a float32 NHWC batch `x` of shape (B, H, W, C); it returns logits
   of shape (B, N). Use Flax's own layers: `nnx.Dropout` and `nnx.BatchNorm` follow the
   training/evaluation switch by themselves (cnnlab calls `.train()` / `.eval()`), and batch
   statistics are saved with the checkpoints.

2. Anything with two pure functions, `init` and `apply` (a class of staticmethods, a
   namespace, or the file itself when `:Name` is left out):

       init(key, input_shape, num_classes, **args) -> params          # any pytree of arrays
       apply(params, x, *, train, key) -> logits                      # (B, N)

   `key` is a PRNG key for dropout-like randomness; apply must not keep state between calls.

`args` are passed as keyword arguments; unknown or missing ones are reported before training.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from cnnlab.errors import SpecError, UserError, suggest
from cnnlab.models.base import Model, from_nnx
from cnnlab.models.spec import PythonModelSpec

NNX_FIXED = ("in_shape", "num_classes", "rngs")
_LOADED: dict[tuple[Path, int], Any] = {}


def split_target(target: str) -> tuple[Path, str | None]:
    """'/a/b.py:Net' -> (/a/b.py, 'Net'); '/a/b.py' -> (/a/b.py, None)."""
    file, sep, name = target.rpartition(":")
    if sep and name.isidentifier() and file:
        return Path(file).expanduser().resolve(), name
    return Path(target).expanduser().resolve(), None


def _where(error: BaseException, file: Path) -> str:
    """' (at file.py:12)': the deepest line of `file` in the error's traceback."""
    if isinstance(error, SyntaxError) and error.lineno:
        return f" (at {file.name}:{error.lineno})"
    lines = [
        frame.lineno
        for frame in traceback.extract_tb(error.__traceback__)
        if Path(frame.filename) == file
    ]
    return f" (at {file.name}:{lines[-1]})" if lines else ""


def _explain(error: BaseException, file: Path) -> str:
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first_line}{_where(error, file)}"


def load_module(file: Path) -> Any:
    """Import a Python file by path (again only when it changed on disk)."""
    if not file.is_file():
        raise SpecError(("python",), f"file not found: {file}")
    key = (file, file.stat().st_mtime_ns)
    if key not in _LOADED:
        module_name = f"cnnlab_user.{file.stem}_{abs(hash(str(file)))}"
        spec = importlib.util.spec_from_file_location(module_name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and pickling look modules up here
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit, KeyboardInterrupt) as error:
            # A file that calls exit() or raises KeyboardInterrupt at import would otherwise end
            # cnnlab silently (exit 0) or look like Ctrl-C: it is an error in that file.
            del sys.modules[module_name]
            raise UserError(f"{file}: importing it failed: {_explain(error, file)}") from error
        _LOADED[key] = module
    return _LOADED[key]


def _kind(target: Any) -> str | None:
    if isinstance(target, type) and issubclass(target, nnx.Module):
        return "nnx"
    if callable(getattr(target, "init", None)) and callable(getattr(target, "apply", None)):
        return "functions"
    return None


def _check_args(
    function: Callable, skip: int, fixed: tuple[str, ...], args: dict, title: str
) -> None:
    """Compare `args` and the `fixed` keywords with the parameters `function` takes."""
    params = list(inspect.signature(function).parameters.values())[skip:]
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    named = [
        p for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL, p.POSITIONAL_ONLY)
    ]
    names = [p.name for p in named]
    for name in fixed:
        if name not in names and not open_ended:
            raise SpecError(("python",), f"{title} must accept the keyword argument '{name}'")
    for name in args:
        if name not in names and not open_ended:
            valid = [n for n in names if n not in fixed]
            if not valid:  # "valid: " with nothing after it would puzzle
                raise SpecError(("args",), f"{title} takes no arguments; remove `args`")
            raise SpecError(
                ("args", name), f"{title} takes no argument '{name}'; {suggest(name, valid)}"
            )
    for p in named:
        if p.default is p.empty and p.name not in fixed and p.name not in args:
            raise SpecError(("args",), f"{title} needs the argument '{p.name}'")


def load_target(spec: PythonModelSpec) -> Any:
    module = load_module(spec.file)
    return module if spec.name is None else getattr(module, spec.name)


def resolve_python_model(target: str, args: dict) -> PythonModelSpec:
    """Find the file and the name, tell which kind of model it is and check its arguments."""
    file, name = split_target(target)
    module = load_module(file)
    if name is not None and not hasattr(module, name):
        public = [n for n in vars(module) if not n.startswith("_")]
        raise SpecError(("python",), f"{file} has no '{name}'; {suggest(name, public)}")
    obj = module if name is None else getattr(module, name)
    spec = PythonModelSpec(file, name, _kind(obj) or "", args)
    if spec.kind == "nnx":
        _check_args(obj.__init__, 1, NNX_FIXED, args, spec.title)
    elif spec.kind == "functions":
        _check_args(obj.init, 3, (), args, f"{spec.title} init")
    else:
        what = f"a {type(obj).__name__}" if name else "a file without top-level init and apply"
        raise SpecError(
            ("python",),
            f"{spec.title} is {what}; expected an nnx.Module subclass or an object with "
            "init(key, input_shape, num_classes, **args) and apply(params, x, *, train, key)",
        )
    return spec


def _guarded(spec: PythonModelSpec, run: Callable[[], Any]) -> Any:
    """Run user code; its errors become one UserError line that names the file and line."""
    try:
        return run()
    except UserError:
        raise
    except (Exception, SystemExit) as error:  # exit() in user code is an error, not "done"
        raise UserError(f"{spec.title}: {_explain(error, spec.file)}") from error


def _model(spec: PythonModelSpec, input_shape: tuple, num_classes: int) -> Model:
    target = load_target(spec)
    if spec.kind == "nnx":

        def make(rngs: nnx.Rngs) -> nnx.Module:
            return target(in_shape=input_shape, num_classes=num_classes, rngs=rngs, **spec.args)

        return from_nnx(make)

    def init(key):
        return target.init(key, input_shape, num_classes, **spec.args), {}

    def apply(params, state, x, *, train: bool, key=None, taps=None):
        return target.apply(params, x, train=train, key=key), state

    return Model(init, apply)


def build_python_model(spec: PythonModelSpec, input_shape: tuple, num_classes: int) -> Model:
    """Build a Python model and check, on shapes only, that it gives (B, num_classes) logits."""
    input_shape = tuple(input_shape)
    model = _guarded(spec, lambda: _model(spec, input_shape, num_classes))
    key = jax.random.key(0)
    x = jnp.zeros((2, *input_shape), jnp.float32)
    for train in (False, True):
        logits, _ = _guarded(
            spec,
            lambda train=train: jax.eval_shape(
                lambda: model.apply(*model.init(key), x, train=train, key=key)
            ),
        )
        if logits.shape != (2, num_classes):
            raise SpecError(
                ("python",),
                f"{spec.title} returns logits of shape {logits.shape} for a batch of 2 images "
                f"{input_shape}; expected (2, {num_classes})",
            )
    return model


def count(tree: Any) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def python_cost(model: Model, input_shape: tuple) -> tuple[int, int, int]:
    """(parameters, state values, forward FLOPs per image from XLA's cost analysis)."""
    key = jax.random.key(0)
    params, state = jax.eval_shape(model.init, key)
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)

    def forward(params, state, x):
        return model.apply(params, state, x, train=False, key=key)[0]

    cost = jax.jit(forward).lower(params, state, x).compile().cost_analysis()
    if isinstance(cost, list):  # older jax returns one dict per device
        cost = cost[0] if cost else {}
    return count(params), count(state), int((cost or {}).get("flops", 0))
