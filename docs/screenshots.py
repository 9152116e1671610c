"""Retake the page's screenshots in docs/ with headless Chromium (Debian's chromium and
chromium-driver) and Selenium:

    cnnlab train experiments/digits.yaml --set train.steps=600 && cnnlab eval latest
    python docs/screenshots.py runs/<that run>

It serves the run's folder on a free local port, opens the run page, draws a 2 on the canvas of
"Try it", and shows resnet_small in 3D with a block hovered."""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from cnnlab.ui.server import create_app

DOCS = Path(__file__).resolve().parent
TWO = [(70, -10), (40, 40), (-60, 70), (-50, 50), (100, 0)]  # pen moves of a handwritten 2


def serve(root: Path) -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(root), port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}/"


def browser(width: int, height: int):
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--hide-scrollbars"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={width},{height}")
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def shoot(run_dir: Path) -> None:
    base = serve(run_dir.parent)
    driver = browser(1280, 1000)
    wait = WebDriverWait(driver, 120)
    try:
        driver.get(f"{base}#/run/{run_dir.name}")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#mistakes figure"))
        driver.save_screenshot(str(DOCS / "ui_run.png"))

        driver.get(f"{base}#/try/{run_dir.name}")
        canvas = wait.until(lambda d: d.find_element(By.ID, "pad"))
        actions = (
            ActionChains(driver).move_to_element_with_offset(canvas, -70, -70).click_and_hold()
        )
        for dx, dy in TWO:
            actions.move_by_offset(dx, dy)
        actions.release().perform()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#feature-maps img"))
        time.sleep(0.5)
        driver.save_screenshot(str(DOCS / "ui_try.png"))

        driver.get(f"{base}#/net/exp/digits/resnet_small")
        blocks = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "g.block.layer"))
        ActionChains(driver).move_to_element(
            blocks[10].find_elements(By.TAG_NAME, "polygon")[-1]
        ).perform()
        time.sleep(0.3)
        driver.save_screenshot(str(DOCS / "ui_net3d.png"))
    finally:
        driver.quit()


if __name__ == "__main__":
    shoot(Path(sys.argv[1]).resolve())
