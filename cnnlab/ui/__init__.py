"""Seeing inside networks and runs: the local web page (`cnnlab ui`), the network in 3D, and
the pictures of `cnnlab activations`, `filters` and `saliency`.

`probe` is the one module here that touches a trained model; `server` needs the `ui` extra
(Starlette and uvicorn), everything else only cnnlab's own dependencies."""

from cnnlab.errors import UserError

EXTRA_HINT = "pip install 'cnnlab[ui]'"


def require_server() -> None:
    """A one-line error naming the extra when the web page's libraries are missing."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise UserError(
            f"cnnlab ui needs the ui extra ({error.name} is missing): {EXTRA_HINT}"
        ) from None
