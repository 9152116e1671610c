"""Templates: a Python file with a catalogue entry's contract for the learner to fill in.

`cnnlab check --template conv2d > my_conv.py` writes the JAX form (one function, gradients by
jax.grad); `--numpy` writes the NumPy form (`NAME_forward` and `NAME_backward`). Optimizers are
optax-style factories in both; `--numpy` lets their state hold NumPy arrays.
"""

from __future__ import annotations

import textwrap

from cnnlab.check.catalogue import REQUIRED, Entry, get_entry


def _wrap(text: str, indent: str) -> str:
    return textwrap.fill(text, 92, initial_indent=indent, subsequent_indent=indent)


def _params(entry: Entry) -> str:
    return ", ".join(n if d is REQUIRED else f"{n}={d!r}" for n, d in entry.params)


def _header(entry: Entry, file_hint: str, numpy: bool) -> str:
    form = "NumPy form" if numpy else "JAX form"
    return (
        f'"""My {entry.name} ({form}). Check it with:\n\n'
        f"    cnnlab check {file_hint}:{entry.name}\n\n"
        f"Contract: {entry.signature}\n\n{_wrap(entry.contract, '')}\n"
        '"""\n'
    )


def _layer_jax(entry: Entry) -> str:
    return (
        "import jax\nimport jax.numpy as jnp\n\n\n"
        f"def {entry.name}({_params(entry)}):\n"
        f'    """{entry.summary}. Write it with jax.numpy: its gradient comes from jax.grad."""\n'
        f'    raise NotImplementedError("write {entry.name}")\n'
    )


def _layer_numpy(entry: Entry) -> str:
    grads = ", ".join(f"d{g}" for g in entry.grads)
    return (
        "import numpy as np\n\n\n"
        f"def {entry.name}_forward({_params(entry)}):\n"
        f'    """{entry.summary}.\n\n'
        "    Returns (out, cache): out as the contract says, cache whatever the backward pass\n"
        '    needs (the inputs, masks, intermediate values)."""\n'
        f'    raise NotImplementedError("write {entry.name}_forward")\n\n\n'
        f"def {entry.name}_backward(dout, cache):\n"
        f'    """dout: the gradient of the loss with respect to {entry.outputs[0]}.\n\n'
        f'    Returns ({grads}), each the shape of its input."""\n'
        f'    raise NotImplementedError("write {entry.name}_backward")\n'
    )


def _optimizer(entry: Entry, numpy: bool) -> str:
    imports = (
        "import numpy as np\nimport optax\n"
        if numpy
        else "import jax\nimport jax.numpy as jnp\nimport optax\n"
    )
    state_note = (
        "    State may hold NumPy arrays (the check then runs it without jax.jit; training\n"
        "    needs jax.numpy)."
        if numpy
        else "    Use jax.tree.map over params and grads; keep everything that changes in state."
    )
    return (
        f"{imports}\n\n"
        f"def {entry.name}({_params(entry)}):\n"
        f'    """{entry.summary}.\n\n{state_note}\n    """\n\n'
        "    def init(params):\n"
        f'        raise NotImplementedError("write {entry.name}: init")\n\n'
        "    def update(grads, state, params=None):\n"
        "        # return (updates, new_state); params + updates are the new params\n"
        f'        raise NotImplementedError("write {entry.name}: update")\n\n'
        "    return optax.GradientTransformation(init, update)\n"
    )


def template(name: str, numpy: bool = False) -> str:
    """The text of a template file for catalogue entry `name`."""
    entry = get_entry(name)
    file_hint = f"my_{entry.name}.py"
    if entry.kind == "optimizer":
        body = _optimizer(entry, numpy)
    else:
        body = _layer_numpy(entry) if numpy else _layer_jax(entry)
    return _header(entry, file_hint, numpy) + "\n" + body
