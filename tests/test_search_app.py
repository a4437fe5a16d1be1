"""The web page: `atr-search serve` driven in headless Chromium (type, read results, play from the span), and a
written Space's app.py started and answering."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import soundfile as sf

from atr.search import AudioIndex
from tests.test_search import RATE, model_and_processor, model_dir  # noqa: F401 (fixtures)

pytest.importorskip("gradio", reason="the web page needs gradio: pip install 'atr[search]'")
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command, port, cwd=None, timeout=240):
    """Start a web server process and wait until its page answers; returns the process."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1"}
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{process.stdout.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                if response.status == 200:
                    return process
        except OSError:
            time.sleep(1)
    process.kill()
    raise AssertionError(f"server did not answer within {timeout} s:\n{process.stdout.read()}")


def stop(process):
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def served_index(tmp_path_factory, model_and_processor):
    """An index of four recordings (one with two sounds apart) built with the tiny model."""
    model, processor = model_and_processor
    folder = tmp_path_factory.mktemp("audio")
    t = np.arange(16000) / 16000
    for i, name in enumerate(["birds.wav", "engine.wav", "knock.wav"]):
        sf.write(folder / name, (0.3 * np.sin(2 * np.pi * (300 + 500 * i) * t)).astype(np.float32), 16000)
    scene = np.concatenate([0.3 * np.sin(2 * np.pi * 400 * t), np.zeros(32000), 0.3 * np.sin(2 * np.pi * 2400 * t)])
    sf.write(folder / "scene.wav", scene.astype(np.float32), 16000)
    out = tmp_path_factory.mktemp("index")
    return AudioIndex.build(model, processor, folder, out, progress=False)


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="headless Chromium not installed: apt-get install chromium chromium-driver (.ci/run does)")
def test_serve_page_in_headless_chromium_finds_the_file_and_plays_from_its_span(served_index, model_dir, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    query = "a dog bark"
    expected = served_index.search(query, k=4)
    port = free_port()
    server = start([sys.executable, "-m", "atr.search", "serve", "--index-dir", str(served_index.out_dir),
                    "--model", str(model_dir), "--port", str(port)], port)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1400",
                 "--autoplay-policy=no-user-gesture-required", "--mute-audio"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 120)
        box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#atr-query textarea, #atr-query input"))
        box.send_keys(query + Keys.ENTER)
        # results update as one types: wait for the list answering the whole query
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'#atr-results[data-query="{query}"] .atr-hit'))
        hits = driver.find_elements(By.CSS_SELECTOR, ".atr-hit")
        assert [h.get_attribute("data-name") for h in hits] == [h.name for h in expected]
        assert expected[0].name in hits[0].find_element(By.CSS_SELECTOR, ".atr-name").text
        assert hits[0].find_elements(By.CSS_SELECTOR, "svg .atr-mark")  # the waveform marks the span

        audio = hits[0].find_element(By.TAG_NAME, "audio")
        start_s, end_s = expected[0].start, expected[0].end
        assert audio.get_attribute("src").endswith(f"#t={start_s:.3f},{end_s:.3f}")
        # the media fragment puts the player at the span: once the file loads, it plays from start_s
        wait.until(lambda d: d.execute_script("return arguments[0].readyState", audio) >= 1)
        driver.execute_script("arguments[0].play()", audio)
        wait.until(lambda d: d.execute_script("return arguments[0].currentTime", audio) > 0)
        position = driver.execute_script("return arguments[0].currentTime", audio)
        assert start_s - 0.05 <= position <= end_s + 0.05
        screenshot = os.environ.get("ATR_SEARCH_SCREENSHOT") or str(tmp_path / "search.png")
        driver.save_screenshot(screenshot)
    finally:
        driver.quit()
        stop(server)


def test_written_space_app_starts_and_answers(tmp_path, model_dir):
    from gradio_client import Client

    from atr.search.space import write_space

    space = write_space(tmp_path / "space", str(model_dir))
    assert {"app.py", "requirements.txt", "README.md", "atr", "audio", "index"} <= {p.name for p in space.iterdir()}
    readme = (space / "README.md").read_text()
    assert "sdk: gradio" in readme and "app_file: app.py" in readme and f"- {model_dir}" in readme
    assert "gradio==" in (space / "requirements.txt").read_text()
    with pytest.raises(FileExistsError, match="not empty"):
        write_space(space, str(model_dir))

    port = free_port()
    server = start([sys.executable, "app.py"], port, cwd=space)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert "atr" in response.read().decode()
        page = Client(f"http://127.0.0.1:{port}/", verbose=False).predict("a dog bark", 3, False, api_name="/by_text")
        assert page.count('class="atr-hit"') == 3
        names = json.loads((space / "index" / "manifest.json").read_text())["items"]
        assert len(names) == 4
    finally:
        stop(server)
