"""The local web page (`cnnlab ui`): a Starlette app that serves the page's files from the
package and answers its JSON requests about runs, sweeps, networks and drawn images.

Every answer to a bad request is JSON `{"error": "one line"}` with a 4xx code; an unexpected
failure is a 500 with one line, its traceback going to the terminal, never to the page."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from cnnlab.errors import UserError
from cnnlab.ui import catalog, netview, pictures, probe
from cnnlab.ui.paths import NotFound, relative_name, run_folder, sweep_folder
from cnnlab.ui.uploads import MAX_BYTES, UploadError, check_size, decode_image

STATIC = Path(__file__).resolve().parent / "static"
MAX_TOP_K = 100
log = logging.getLogger("cnnlab.ui")


class ProbeCache:
    """Restored runs, newest used kept (restoring takes seconds; a page asks many times). A run
    that saved a newer checkpoint since is restored again."""

    def __init__(self, size: int = 2):
        self.size = size
        self.items: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    @staticmethod
    def _version(run_dir: Path) -> tuple:
        folders = sorted((run_dir / "checkpoints").glob("*/*"))
        return tuple((p.as_posix(), p.stat().st_mtime_ns) for p in folders)

    def get(self, run_dir: Path) -> probe.Probe:
        key = (run_dir, self._version(run_dir))
        with self.lock:  # one restore at a time: each one is already using every core
            if key not in self.items:
                self.items[key] = probe.load_probe(run_dir)
                while len(self.items) > self.size:
                    self.items.popitem(last=False)
            self.items.move_to_end(key)
            return self.items[key]


def create_app(runs_root: Path) -> Starlette:
    """The app for the runs under `runs_root`."""
    root = Path(runs_root)
    cache = ProbeCache()

    def runs(request: Request):
        return JSONResponse({"root": str(root), "runs": catalog.list_runs(root)})

    def run(request: Request):
        path = run_folder(root, request.path_params["name"])
        return JSONResponse(catalog.run_detail(root, path))

    def sweeps(request: Request):
        return JSONResponse({"sweeps": catalog.list_sweeps(root)})

    def sweep(request: Request):
        path = sweep_folder(root, request.path_params["name"])
        return JSONResponse(catalog.sweep_detail(root, path))

    def experiments(request: Request):
        return JSONResponse({"experiments": experiment_names(), "models": model_names()})

    def experiment_network(request: Request):
        name = known(request.path_params["name"], experiment_names(), "experiment")
        overrides = []
        if request.query_params.get("model"):
            model = known(request.query_params["model"], model_names(), "model")
            overrides.append(f"model={model}")
        title, summary = probe.experiment_summary(name, overrides)
        label = f"{title} with model {overrides[0][6:]}" if overrides else title
        return JSONResponse(netview.network_data(summary, label))

    def run_network(request: Request):
        path = run_folder(root, request.path_params["name"])
        summary = probe.run_summary(path)
        return JSONResponse(netview.network_data(summary, relative_name(root, path)))

    def filters(request: Request):
        return JSONResponse(
            filters_answer(cache.get(run_folder(root, request.path_params["name"])))
        )

    def mistakes(request: Request):
        found = cache.get(run_folder(root, request.path_params["name"]))
        return JSONResponse({"mistakes": mistakes_answer(found)})

    async def try_image(request: Request):
        path = run_folder(root, request.path_params["name"])
        top_k = top_k_option(request.query_params.get("top_k", "10"))
        data = await read_body(request)
        image = decode_image(data)
        found = await run_in_threadpool(cache.get, path)
        answer = await run_in_threadpool(try_answer, found, image, top_k)
        return JSONResponse({"run": relative_name(root, path), **answer})

    def index(request: Request):
        return FileResponse(STATIC / "index.html")

    routes = [
        Route("/", index),
        Route("/api/runs", runs),
        Route("/api/run/{name:path}", run),
        Route("/api/sweeps", sweeps),
        Route("/api/sweep/{name:path}", sweep),
        Route("/api/experiments", experiments),
        Route("/api/network/experiment/{name}", experiment_network),
        Route("/api/network/run/{name:path}", run_network),
        Route("/api/filters/{name:path}", filters),
        Route("/api/mistakes/{name:path}", mistakes),
        Route("/api/try/{name:path}", try_image, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    handlers = {UserError: user_error, HTTPException: http_error, Exception: server_error}
    return Starlette(routes=routes, exception_handlers=handlers)


# -- answers ---------------------------------------------------------------------------------


def try_answer(found: probe.Probe, image, top_k: int) -> dict:
    """Everything the drawing panel shows for one image."""
    probe.require_image_input(found)
    pixels = probe.model_input(found, image)
    chances = probe.probabilities(found, pixels)
    order = chances.argsort()[::-1][:top_k]
    top_class, gradient = probe.saliency(found, pixels)
    layers = pictures.spatial_layers(probe.activations(found, pixels))
    mean, std = found.norm.tolist()
    return {
        "checkpoint": found.checkpoint,
        "step": found.step,
        "input": {
            "picture": pictures.data_url(pictures.input_picture(pixels)),
            "shape": list(found.input_shape),
            "received_size": list(image.size),
            "mean": mean,
            "std": std,
        },
        "top": [{"class": found.class_names[i], "probability": float(chances[i])} for i in order],
        "feature_maps": [feature_map_answer(row, out) for row, out in layers],
        "filters": filters_answer(found),
        "saliency": {
            "class": found.class_names[top_class],
            "picture": pictures.data_url(pictures.saliency_picture(pixels, gradient)),
        },
    }


def feature_map_answer(row, output, limit: int = 16) -> dict:
    return {
        "layer": row.name,
        "kind": row.kind,
        "detail": row.detail,
        "shape": list(output.shape),
        "shown": min(limit, output.shape[-1]),
        "picture": pictures.data_url(pictures.feature_maps(output, limit)),
    }


def filters_answer(found: probe.Probe) -> dict | None:
    first = probe.first_filters(found)
    if first is None:
        return None
    row, kernel = first
    return {
        "layer": row.name,
        "detail": row.detail,
        "shape": list(kernel.shape),
        "picture": pictures.data_url(pictures.filters_picture(kernel)),
    }


def mistakes_answer(found: probe.Probe) -> list[dict]:
    return [
        {
            **{k: v for k, v in m.items() if k != "image"},
            "picture": pictures.data_url(pictures.input_picture(m["image"], 84)),
        }
        for m in probe.confident_mistakes(found)
    ]


# -- request checks --------------------------------------------------------------------------


async def read_body(request: Request) -> bytes:
    """The request body, refused as soon as it passes the size limit."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise UploadError("bad Content-Length header: give the body's size in bytes")
        check_size(int(declared))
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BYTES:
            check_size(len(body))
    return bytes(body)


def top_k_option(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_TOP_K:
        raise UserError(f"top_k={text[:20]!r}: give a whole number from 1 to {MAX_TOP_K}")
    return int(text)


def experiment_names() -> list[str]:
    from cnnlab.config import EXPERIMENTS_DIR

    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))


def model_names() -> list[str]:
    from cnnlab.config import EXPERIMENTS_DIR

    return sorted(p.stem for p in (EXPERIMENTS_DIR / "models").glob("*.yaml"))


def known(name: str, names: list[str], what: str) -> str:
    """Only names from the lists travel on (so no path does)."""
    if name not in names:
        raise NotFound(f"no {what} '{name[:80]}'; choose one of: {', '.join(names)}")
    return name


# -- errors ----------------------------------------------------------------------------------


def user_error(request: Request, error: Exception) -> JSONResponse:
    status = 404 if isinstance(error, NotFound) else getattr(error, "status", 400)
    return JSONResponse({"error": str(error)}, status_code=status)


def http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    messages = {404: f"no such page: {request.url.path}", 405: "method not allowed here"}
    message = messages.get(error.status_code, str(error.detail))
    return JSONResponse({"error": message}, status_code=error.status_code)


def server_error(request: Request, error: Exception) -> JSONResponse:
    log.exception("cnnlab ui: %s %s failed", request.method, request.url.path)
    message = f"internal error ({type(error).__name__}); the terminal running cnnlab ui has details"
    return JSONResponse({"error": message}, status_code=500)


def serve(runs_root: Path, host: str = "127.0.0.1", port: int = 8765) -> None:
    import uvicorn

    uvicorn.run(create_app(runs_root), host=host, port=port, log_level="warning")
