"""The page in a real headless browser (Debian's chromium and chromium-driver, driven by
Selenium): draw a digit with the mouse and read the prediction and the feature maps; hover the
network in 3D and read each block's shape."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from ui_support import trained_run

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver",
)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="the ui extra is not installed")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from cnnlab.ui.server import create_app  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def page(run):
    """The address of a server for the run's folder, on a free local port, in a thread."""
    config = uvicorn.Config(
        create_app(run.parent), host="127.0.0.1", port=free_port(), log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{config.port}/"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1300,1000",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(browser, css: str, count: int = 1, seconds: float = 60):
    WebDriverWait(browser, seconds).until(
        lambda b: len(b.find_elements(By.CSS_SELECTOR, css)) >= count
    )
    return browser.find_elements(By.CSS_SELECTOR, css)


def draw_stroke(browser, canvas) -> None:
    """A '7' with the mouse: press, move along three points, release."""
    actions = ActionChains(browser)
    actions.move_to_element_with_offset(canvas, -80, -80).click_and_hold()
    for dx, dy in [(60, 0), (100, 0), (-40, 80), (-40, 80)]:
        actions.move_by_offset(dx, dy)
    actions.release().perform()


def test_drawing_a_digit_shows_probabilities_and_feature_maps(browser, page, run):
    browser.get(f"{page}#/try/{run.name}")
    canvas = wait_for(browser, "canvas#pad")[0]
    draw_stroke(browser, canvas)
    rows = wait_for(browser, "#probabilities .prob-row", 10)
    assert len(rows) == 10  # digits: all ten classes
    probabilities = [float(row.get_attribute("data-p")) for row in rows]
    assert sum(probabilities) == pytest.approx(1, abs=1e-6)
    assert probabilities == sorted(probabilities, reverse=True)
    maps = wait_for(browser, "#feature-maps figure img", 2)
    assert [m.find_element(By.XPATH, "..").get_attribute("data-layer") for m in maps] == ["0", "3"]
    assert all(browser.execute_script("return arguments[0].naturalWidth", m) > 0 for m in maps)
    inked = browser.execute_script(
        "const c = document.getElementById('pad').getContext('2d');"
        "return c.getImageData(0, 0, 280, 280).data.some((v, i) => i % 4 === 0 && v > 128);"
    )
    assert inked  # the stroke was drawn by the mouse, not injected


def test_the_3d_view_has_one_block_per_layer_and_tells_its_shape_on_hover(browser, page, run):
    from cnnlab.ui.probe import run_summary

    rows = run_summary(run).rows
    browser.get(f"{page}#/net/run/{run.name}")
    blocks = wait_for(browser, "svg.net-svg g.block.layer", len(rows))
    assert len(blocks) == len(rows)
    tip = browser.find_element(By.CSS_SELECTOR, ".net-tip")
    for row in rows:
        block = browser.find_element(By.CSS_SELECTOR, f'g.block[data-name="{row.name}"]')
        face = block.find_elements(By.TAG_NAME, "polygon")[-1]
        ActionChains(browser).move_to_element(face).perform()
        WebDriverWait(browser, 5).until(
            lambda b, name=row.name: tip.get_attribute("data-name") == name
        )
        shape = "\u00d7".join(str(n) for n in row.output_shape)
        assert tip.is_displayed() and f"output {shape}" in tip.text
        assert f"params {row.params:,}" in tip.text


def test_the_run_page_draws_curves_and_the_confusion_matrix(browser, page, run):
    browser.get(f"{page}#/run/{run.name}")
    assert len(wait_for(browser, ".chart path.line", 2)) >= 2
    cells = wait_for(browser, "table.confusion tbody td", 10 * 11)
    assert len(cells) == 10 * 11
    wait_for(browser, "#mistakes figure img")
