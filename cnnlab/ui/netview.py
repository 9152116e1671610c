"""The network in 3D: a model summary (`cnnlab.models.describe_model`) as the blocks the page
draws, and the same drawing as one self-contained HTML file (`cnnlab inspect EXP --html`).

Blocks come in drawing order: the input first, then one block per layer, a residual block's
layers before the block that adds them to its input (with `skip_from`, the block whose output
the arc carries over)."""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path


def _block(row) -> dict:
    return {
        "name": row.name,
        "kind": row.kind,
        "detail": row.detail,
        "shape": list(row.output_shape),
        "params": row.params,
        "flops": row.flops,
        "depth": row.depth,
        "trainable": row.trainable,
    }


def blocks(summary) -> list[dict]:
    """The input and every layer of `summary`, in drawing order."""
    drawn = [
        {
            "name": "input",
            "kind": "input",
            "detail": "",
            "shape": list(summary.input_shape),
            "params": 0,
            "flops": 0,
            "depth": 0,
            "trainable": True,
        }
    ]
    open_blocks: list[tuple] = []  # (residual row, index of the block feeding it)

    def close() -> None:
        row, source = open_blocks.pop()
        drawn.append({**_block(row), "skip_from": source})

    for row in summary.rows:
        while open_blocks and not row.name.startswith(open_blocks[-1][0].name + "."):
            close()
        if row.kind == "residual":
            open_blocks.append((row, len(drawn) - 1))
        else:
            drawn.append(_block(row))
    while open_blocks:
        close()
    return drawn


def network_data(summary, title: str = "") -> dict:
    """What the 3D view needs, as JSON-ready data."""
    return {
        "title": title or summary.title,
        "model": summary.title,
        "input_shape": list(summary.input_shape),
        "num_classes": summary.num_classes,
        "total_params": summary.total_params,
        "total_flops": summary.total_flops,
        "notes": list(summary.notes),
        "layers": len(summary.rows),
        "blocks": blocks(summary),
    }


def static_text(name: str) -> str:
    return resources.files("cnnlab.ui").joinpath("static", name).read_text(encoding="utf-8")


def _inline_json(data: dict) -> str:
    """JSON safe inside a <script> element ('</script>' in a name cannot end it)."""
    return json.dumps(data).replace("</", "<\\/")


def standalone_html(data: dict) -> str:
    """One HTML file with the drawing's script, style and data inside: it opens offline."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(data["title"])}: the network in 3D</title>
<style>{static_text("style.css")}</style>
</head><body class="standalone">
<h1>{html.escape(data["title"])}</h1>
<div id="net"></div>
<script>{static_text("net3d.js")}</script>
<script>CnnlabNet.draw(document.getElementById("net"), {_inline_json(data)});</script>
</body></html>
"""


def write_html(data: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(standalone_html(data), encoding="utf-8")
    return path
