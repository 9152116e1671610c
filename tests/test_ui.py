"""The web page's server through Starlette's test client (every endpoint, path traversal, bad
uploads), the probe against the trained model, and the picture commands through the CLI."""

from __future__ import annotations

import json
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import EXPERIMENTS, Cli, write
from PIL import Image
from ui_support import drawn_digit, png, trained_run

from cnnlab.ui import uploads

starlette = pytest.importorskip("starlette", reason="the ui extra is not installed")
from starlette.testclient import TestClient  # noqa: E402

from cnnlab.ui.server import create_app  # noqa: E402

CONV_SHAPES = [[8, 8, 32], [4, 4, 64]]  # digits.yaml's two conv layers on 8x8 images


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def site(run, tmp_path_factory):
    """A runs folder holding the trained run, another run that differs in its learning rate and
    has only started, a sweep, a secret outside it, and symbolic links pointing at the secret."""
    root = tmp_path_factory.mktemp("site") / "runs"
    shutil.copytree(run, root / run.name, symlinks=True)
    started = root / "2026-01-01_00-00-00_digits"
    started.mkdir()
    config = (run / "config.yaml").read_text().replace("lr: 0.001", "lr: 0.01")
    write(started / "config.yaml", config)
    row = {"step": 10, "split": "train", "loss": 2.0, "accuracy": 0.3, "lr": 0.01}
    write(started / "metrics.jsonl", json.dumps(row) + "\n")
    make_sweep(root / "2026-01-02_00-00-00_sweep_lr", config)
    secret = root.parent / "outside"
    write(secret / "config.yaml", "name: SECRET-CONFIG\n")
    (root / "escape").symlink_to(secret, target_is_directory=True)
    linked = root / "linked-config"
    linked.mkdir()
    (linked / "config.yaml").symlink_to(secret / "config.yaml")
    return root


def make_sweep(folder: Path, config: str) -> None:
    """The files `cnnlab sweep` leaves: sweep.json, the two CSVs, one trial run."""
    trials = [{"id": "lr=0.01-s0", "setting": "lr=0.01", "seed": 0, "values": {}}]
    write(
        folder / "sweep.json",
        json.dumps({"name": "lr", "metric": "val_accuracy", "trials": trials}),
    )
    write(
        folder / "sweep_settings.csv",
        "rank,setting,optimizer.lr,val_accuracy_mean,val_accuracy_std,seeds,seeds_total\n"
        "1,lr=0.01,0.01,0.95,,1,1\n2,lr=0.1,0.1,0.61,,1,1\n",
    )
    write(
        folder / "sweep.csv",
        "trial,setting,seed,optimizer.lr,status\nlr=0.01-s0,lr=0.01,0,0.01,completed\n",
    )
    write(folder / "trials" / "lr=0.01-s0" / "config.yaml", config)


@pytest.fixture(scope="module")
def client(site):
    return TestClient(create_app(site))


def run_id(site: Path) -> str:
    return next(p.name for p in site.iterdir() if (p / "checkpoints").is_dir())


# -- runs and sweeps -------------------------------------------------------------------------


def test_runs_list_shows_status_data_model_differing_settings_and_accuracies(client, site):
    runs = {r["id"]: r for r in client.get("/api/runs").json()["runs"]}
    assert set(runs) == {run_id(site), "2026-01-01_00-00-00_digits"}  # no sweep, no bad links
    trained, started = runs[run_id(site)], runs["2026-01-01_00-00-00_digits"]
    assert trained["status"] == "completed" and started["status"].startswith("running or stopped")
    assert trained["dataset"] == "digits" and trained["model"] == "cnn/default"
    assert 0.5 < trained["best_val"] <= 1 and 0.5 < trained["test"] <= 1
    assert trained["settings"] == {"optimizer.lr": "0.001"}
    assert started["settings"] == {"optimizer.lr": "0.01"}


def test_run_page_data_has_curves_config_diagnostics_and_confusion(client, site):
    run = client.get(f"/api/run/{run_id(site)}").json()
    assert not run["running"] and run["has_checkpoint"]
    assert {m["split"] for m in run["metrics"]} == {"train", "val"}
    assert "source: digits" in run["config"]
    assert [row["layer"] for row in run["diagnostics"]["layers"]] == ["0", "3", "7", "9"]
    confusion = np.array(run["evaluations"]["test"]["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == run["evaluations"]["test"]["examples"]


def test_a_training_run_is_followed_as_its_metrics_grow(client, site):
    name = "2026-01-01_00-00-00_digits"
    first = client.get(f"/api/run/{name}").json()
    assert first["running"] and first["info"]["steps"] == 10
    with open(site / name / "metrics.jsonl", "a") as handle:
        row = {"step": 20, "split": "train", "loss": 1.5, "accuracy": 0.5, "lr": 0.01}
        handle.write(json.dumps(row) + "\n")
    assert client.get(f"/api/run/{name}").json()["info"]["steps"] == 20


def test_sweeps_list_and_ranked_table_with_links_to_trials(client):
    (sweep,) = client.get("/api/sweeps").json()["sweeps"]
    assert sweep["id"] == "2026-01-02_00-00-00_sweep_lr" and sweep["finished"]
    detail = client.get(f"/api/sweep/{sweep['id']}").json()
    assert [row["setting"] for row in detail["settings"]] == ["lr=0.01", "lr=0.1"]
    trial_run = detail["trials"][0]["run"]
    assert trial_run == f"{sweep['id']}/trials/lr=0.01-s0"
    assert client.get(f"/api/run/{trial_run}").status_code == 200


# -- the network -----------------------------------------------------------------------------


def test_network_of_an_experiment_has_one_block_per_layer(client):
    data = client.get("/api/network/experiment/digits").json()
    assert data["input_shape"] == [8, 8, 1] and data["layers"] == 10
    assert [b["kind"] for b in data["blocks"]][:4] == ["input", "conv", "relu", "max_pool"]
    assert [b["shape"] for b in data["blocks"] if b["kind"] == "conv"] == CONV_SHAPES
    assert data["total_params"] == 53_002


def test_residual_blocks_come_after_their_layers_with_an_arc_from_their_input(client):
    data = client.get("/api/network/experiment/digits?model=resnet_small").json()
    blocks = data["blocks"]
    assert len(blocks) == data["layers"] + 1
    residuals = [(i, b) for i, b in enumerate(blocks) if b["kind"] == "residual"]
    assert len(residuals) == 3
    for index, block in residuals:
        body = [b for b in blocks if b["name"].startswith(block["name"] + ".")]
        assert body and all(blocks.index(b) < index for b in body)  # drawn before the sum
        assert blocks[block["skip_from"]]["name"] not in {b["name"] for b in body}


def test_network_of_a_run_matches_its_experiment(client, site):
    from_run = client.get(f"/api/network/run/{run_id(site)}").json()
    from_file = client.get("/api/network/experiment/digits").json()
    assert from_run["blocks"] == from_file["blocks"]


@pytest.mark.parametrize(
    "url", ["/api/network/experiment/nope", "/api/network/experiment/digits?model=..%2Fdigits"]
)
def test_unknown_experiment_or_model_names_the_choices(client, url):
    response = client.get(url)
    assert response.status_code == 404 and "choose one of" in response.json()["error"]


# -- trying an image -------------------------------------------------------------------------


def test_a_drawn_digit_gets_probabilities_feature_maps_filters_and_saliency(client, site):
    response = client.post(f"/api/try/{run_id(site)}", content=png(drawn_digit()))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert len(answer["top"]) == 10
    assert sum(t["probability"] for t in answer["top"]) == pytest.approx(1, abs=1e-6)
    assert answer["input"]["shape"] == [8, 8, 1] and answer["input"]["received_size"] == [280, 280]
    assert len(answer["input"]["mean"]) == len(answer["input"]["std"]) == 1
    assert [m["shape"] for m in answer["feature_maps"]] == CONV_SHAPES
    assert answer["filters"]["shape"] == [3, 3, 1, 32]
    for picture in [answer["saliency"]["picture"], answer["filters"]["picture"]]:
        assert picture.startswith("data:image/png;base64,")


def test_top_k_limits_the_classes(client, site):
    response = client.post(f"/api/try/{run_id(site)}?top_k=3", content=png(drawn_digit()))
    probabilities = [t["probability"] for t in response.json()["top"]]
    assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)


def test_filters_and_most_confident_mistakes(client, site):
    filters = client.get(f"/api/filters/{run_id(site)}").json()
    assert filters["layer"] == "0" and filters["shape"] == [3, 3, 1, 32]
    mistakes = client.get(f"/api/mistakes/{run_id(site)}").json()["mistakes"]
    chances = [m["probability"] for m in mistakes]
    assert chances == sorted(chances, reverse=True)
    assert all(m["true"] != m["predicted"] for m in mistakes)


def test_a_run_without_checkpoint_cannot_be_tried(client):
    response = client.post("/api/try/2026-01-01_00-00-00_digits", content=png(drawn_digit()))
    assert response.status_code == 400 and "no checkpoint yet" in response.json()["error"]


# -- safety ----------------------------------------------------------------------------------

TRAVERSALS = [
    "..%2F..%2Fetc%2Fpasswd",
    "%2e%2e/%2e%2e/outside",
    "..%2Foutside",
    "%2Fetc",
    "/etc/passwd",
    "....//outside",
    "escape",
    "linked-config",
    "%00",
    "a" * 1000,
]


@pytest.mark.parametrize("prefix", ["run", "network/run", "filters", "mistakes", "sweep"])
@pytest.mark.parametrize("name", TRAVERSALS)
def test_names_never_leave_the_runs_folder(client, prefix, name):
    response = client.get(f"/api/{prefix}/{name}")
    assert 400 <= response.status_code < 500
    assert "SECRET" not in response.text and "root:" not in response.text
    assert response.json()["error"]


@pytest.mark.parametrize("name", TRAVERSALS)
def test_uploads_to_bad_names_are_refused_before_decoding(client, name):
    response = client.post(f"/api/try/{name}", content=png(drawn_digit()))
    assert 400 <= response.status_code < 500 and "SECRET" not in response.text


@pytest.mark.parametrize(
    "path", ["/static/..%2Fprobe.py", "/static/%2e%2e/server.py", "/static/../probe.py"]
)
def test_static_files_stay_in_their_folder(client, path):
    response = client.get(path)
    assert response.status_code == 404 and "import" not in response.text


def _png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims another size (its checksum fixed to match)."""
    data = bytearray(png(Image.new("L", (1, 1))))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"", 400, "holds no image"),
        (b"not an image at all", 400, "not a PNG"),
        (png(drawn_digit())[:200], 400, "damaged or cut short"),
        (_png_claiming(50_000, 50_000), 413, "at most"),
        (b"\x89PNG" + b"\0" * (uploads.MAX_BYTES + 1), 413, "bytes"),
    ],
    ids=["empty", "garbage", "truncated", "pixel-bomb", "too-large"],
)
def test_bad_uploads_get_one_clear_line(client, site, body, status, words):
    response = client.post(f"/api/try/{run_id(site)}", content=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert words in error and "\n" not in error and "Traceback" not in response.text


@pytest.mark.parametrize("top_k", ["0", "abc", "1000", "-1"])
def test_bad_top_k_is_a_400(client, site, top_k):
    response = client.post(f"/api/try/{run_id(site)}?top_k={top_k}", content=png(drawn_digit()))
    assert response.status_code == 400 and "top_k" in response.json()["error"]


def test_wrong_method_and_unknown_pages_answer_json(client):
    assert client.get("/api/try/x").status_code == 405
    response = client.get("/api/nothing")
    assert response.status_code == 404 and "no such page" in response.json()["error"]


def test_an_unexpected_failure_is_one_line_without_traceback(site, monkeypatch):
    from cnnlab.ui import catalog

    def broken(root):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(catalog, "list_runs", broken)
    response = TestClient(create_app(site), raise_server_exceptions=False).get("/api/runs")
    assert response.status_code == 500
    assert "RuntimeError" in response.json()["error"]
    assert "Traceback" not in response.text and "disk on fire" not in response.text


def test_the_page_and_every_asset_it_names_are_served_from_the_package(client):
    page = client.get("/").text
    assets = [part.split('"')[0] for part in page.split('src="')[1:] + page.split('href="/')[1:]]
    assert len(assets) >= 5
    for asset in assets:
        url = asset if asset.startswith("/") else "/" + asset
        assert client.get(url).status_code == 200, url
    assert "http://" not in page and "https://" not in page  # works offline


# -- the command -----------------------------------------------------------------------------


def test_ui_command_listens_on_localhost_and_warns_for_other_hosts(monkeypatch, tmp_path):
    from cnnlab.ui import server

    calls = []
    monkeypatch.setattr(server, "serve", lambda *args: calls.append(args))
    quiet = Cli()("ui", "--runs", tmp_path)
    assert calls[-1] == (tmp_path, "127.0.0.1", 8765) and "warning" not in quiet.stderr
    loud = Cli()("ui", "--host", "0.0.0.0", "--port", "9000")
    assert calls[-1][1:] == ("0.0.0.0", 9000) and "warning" in loud.stderr


def test_ui_without_the_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import fails as if not installed
    result = Cli()("ui", expect=2)
    assert "pip install 'cnnlab[ui]'" in result.stderr and len(result.stderr.splitlines()) == 1


# -- the probe and the picture commands ------------------------------------------------------


@pytest.fixture(scope="module")
def found(run):
    from cnnlab.ui import probe

    return probe.load_probe(run)


def test_the_last_layer_output_is_the_models_answer(found):
    from cnnlab.prediction import softmax
    from cnnlab.ui import probe

    pixels = probe.model_input(found, drawn_digit())
    layers = probe.activations(found, pixels)
    assert [row.output_shape for row, _ in layers] == [out.shape for _, out in layers]
    assert len(layers) == len(found.summary.rows)
    np.testing.assert_allclose(
        softmax(layers[-1][1]), probe.probabilities(found, pixels), atol=1e-5
    )


def test_saliency_is_the_gradient_of_the_top_class(found):
    from cnnlab.ui import probe

    pixels = probe.model_input(found, drawn_digit())
    top, gradient = probe.saliency(found, pixels)
    assert top == int(np.argmax(probe.probabilities(found, pixels)))
    assert gradient.shape == (8, 8, 1) and np.abs(gradient).max() > 0
    # A small step along the gradient raises the top class's logit (first-order check).
    step = 1e-3 * gradient / np.abs(gradient).max()
    scaled = pixels.astype(np.float32) / 255
    before = probe.logits(found, scaled)[top]
    assert probe.logits(found, scaled + step)[top] > before
    assert probe.logits(found, scaled - step)[top] < before


@pytest.fixture
def digit_file(tmp_path) -> Path:
    path = tmp_path / "seven.png"
    drawn_digit().save(path)
    return path


def test_activations_command_draws_each_conv_layer(run, digit_file, tmp_path):
    out = tmp_path / "maps.png"
    result = Cli()("activations", run, digit_file, "--out", out, "--channels", "8")
    assert "2 conv layers" in result.stdout
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.height > 2 * 56


def test_filters_command_draws_the_first_layers_filters(run, tmp_path):
    out = tmp_path / "filters.png"
    result = Cli()("filters", run, "--out", out)
    assert "(3, 3, 1, 32)" in result.stdout
    with Image.open(out) as picture:
        assert picture.size == (16 * 39 + 15 * 4, 2 * 39 + 4)  # 32 filters of 3x3 at 13x, 2 rows


def test_saliency_command_draws_input_map_and_blend(run, digit_file, tmp_path):
    out = tmp_path / "saliency.png"
    assert "saliency of class" in Cli()("saliency", run, digit_file, "--out", out).stdout
    with Image.open(out) as picture:
        assert picture.size == (3 * 168 + 2 * 4, 168)


def test_picture_commands_reject_a_bad_image_in_one_line(run, tmp_path):
    bad = write(tmp_path / "bad.png", "not a picture")
    result = Cli()("saliency", run, bad, "--out", tmp_path / "s.png", expect=2)
    assert "cannot read image" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_inspect_writes_a_self_contained_3d_view(tmp_path):
    out = tmp_path / "net.html"
    Cli()("inspect", EXPERIMENTS / "digits.yaml", "--set", "model=resnet_small", "--html", out)
    page = out.read_text()
    assert "<script src" not in page and "<link" not in page  # nothing to fetch
    data = json.loads(
        page.split('CnnlabNet.draw(document.getElementById("net"), ')[1].split(");</script>")[0]
    )
    assert sum("skip_from" in b for b in data["blocks"]) == 3
    assert len(data["blocks"]) == data["layers"] + 1
