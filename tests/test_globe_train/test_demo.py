"""``globe demo``: a running app called through ``gradio_client`` (a photo given alone) and used in headless
Chromium, offline with the tiny model and with a scripted endpoint; the Space folder and its upload."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from hub_servers import HubWriteServer, free_port
from PIL import Image
from teacher_server import TeacherServer

pytest.importorskip("gradio")
pytest.importorskip("gradio_client")

from globe_train.demo import exif_gps, highlight

EXAMPLES = Path(__file__).resolve().parents[2] / "globe_train" / "space" / "examples"
KYOTO = EXAMPLES / "kyoto.jpg"  # EXIF GPS 35.0037, 135.7788
ANSWER = (
    "<think>The roofs are tiled and the street signs are in Japanese script.</think>"
    "<answer>country: Japan\ncity: Kyoto</answer>"
)


class Demo:
    """``globe demo`` in a process of its own, on a free port of 127.0.0.1."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "HF_HOME": str(tmp_path / "hf"),
            "GRADIO_ANALYTICS_ENABLED": "False",
            "HF_HUB_OFFLINE": "1",
        }
        self.log = open(tmp_path / f"demo-{self.port}.log", "wb")  # noqa: SIM115 - closed in __exit__
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "globe_train.cli", "demo", "--port", str(self.port), *args],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.logfile = tmp_path / f"demo-{self.port}.log"

    def __enter__(self) -> Demo:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(self.url, timeout=1)
                return self
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(self.logfile.read_text()[-3000:]) from None
                time.sleep(0.3)

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        self.log.close()


def test_cues_are_highlighted_and_exif_gps_read():
    pieces = highlight("The street signs are in Japanese and the roofs are tiled.")
    assert ("signs", "signage") in pieces and ("roofs", "architecture") in pieces
    assert "".join(text for text, _ in pieces) == "The street signs are in Japanese and the roofs are tiled."
    lat, lon = exif_gps(KYOTO)
    assert abs(lat - 35.0037) < 1e-3 and abs(lon - 135.7788) < 1e-3
    assert exif_gps(EXAMPLES / "lisbon.jpg")[1] < 0  # west of Greenwich


@pytest.mark.slow
def test_a_photo_alone_through_gradio_client_with_the_tiny_model_offline(tiny_model, tmp_path):
    from gradio_client import Client, handle_file

    with Demo(tmp_path, "--model", str(tiny_model), "--protocol", "ours") as demo:
        assert f"Running on local URL:  http://127.0.0.1:{demo.port}" in demo.logfile.read_text()
        client = Client(demo.url, verbose=False)
        _, place, world, details = client.predict(handle_file(str(KYOTO)), api_name="/predict")
    assert isinstance(place, str) and place
    assert "Photo's GPS (EXIF) 35.0037, 135.7788" in details and "Answered in" in details
    assert Image.open(world).size == (900, 450)  # our own world map, no tiles


@pytest.mark.slow
def test_the_answer_the_map_and_the_distance_through_an_endpoint_and_the_bounds(tmp_path):
    from gradio_client import Client, handle_file

    big = tmp_path / "big.png"
    Image.effect_noise((600, 600), 60).convert("RGB").save(big)  # ~1 MB: over the limit below
    with (
        TeacherServer(lambda image, request: ANSWER) as server,
        Demo(tmp_path, "--endpoint", server.url, "--endpoint-model", "globe", "--max-file-size", "500kb") as demo,
    ):
        client = Client(demo.url, verbose=False)
        reasoning, place, world, details = client.predict(handle_file(str(KYOTO)), api_name="/predict")
        assert place == "Kyoto, Japan"
        km = float(details.split("Distance: ")[1].split(" km")[0])
        assert km < 10  # Kyoto's centre, a few km from the photo's GPS
        assert {"signage", "architecture"} <= {r["class_or_confidence"] for r in reasoning}
        pixels = Image.open(world).convert("RGB")
        x, y = round((135.78 + 180) / 360 * 899), round((90 - 35.0) / 180 * 449)  # Kyoto on the map
        assert pixels.getpixel((x, y)) in {(231, 76, 60), (46, 204, 113)}  # the predicted (red) or true (green) dot
        with pytest.raises(Exception, match=r"(?i)size|large|exceed"):
            client.predict(handle_file(str(big)), "globe (endpoint)", api_name="/predict")


class Listener:
    """A loopback port that counts who connects: what a caller-named URL would reach."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_hostile_callers_name_no_path_or_url_and_a_pixel_bomb_is_never_decoded(tmp_path):
    """The API takes a photo and a choice among the operator's models: a caller's folder, URL or protocol is
    refused without a connection, errors show no server path, and a 49 MP image is refused from its header."""
    from gradio_client import Client, handle_file

    listener = Listener()
    folder = tmp_path / "operator-secret-models" / "tiny"
    bomb = tmp_path / "bomb.png"
    Image.new("L", (7000, 7000), 128).save(bomb)  # 49 MP, a few hundred kB: 49 MB to decode, 147 MB as RGB
    with (
        TeacherServer(lambda image, request: ANSWER) as server,
        Demo(tmp_path, "--endpoint", server.url, "--endpoint-model", "globe") as demo,
    ):
        client = Client(demo.url, verbose=False)
        errors = []
        for args in [(listener.url,), (str(folder),), ("/etc/passwd",), ("globe (endpoint)", "../../etc")]:
            with pytest.raises(Exception) as exc:
                client.predict(handle_file(str(KYOTO)), *args, api_name="/predict")
            errors.append(str(exc.value))
        before = _peak_rss_mb(demo.proc.pid)
        with pytest.raises(Exception, match="over 40,000,000 pixels") as exc:
            client.predict(handle_file(str(bomb)), api_name="/predict")
        errors.append(str(exc.value))
        grown = _peak_rss_mb(demo.proc.pid) - before
        _, place, _, _ = client.predict(handle_file(str(KYOTO)), api_name="/predict")  # the operator's model works
        assert place == "Kyoto, Japan"
    assert listener.connections == 0
    assert grown < 40, f"the server's peak memory grew {grown:.0f} MB: the bomb was decoded"
    assert all("not in the list of choices" in e or "no protocol" in e for e in errors[:4]), errors
    for text in errors:  # the caller's own value may come back; nothing of the server's does
        assert server.url not in text and "gradio" not in text.lower() and str(bomb) not in text, text


def test_the_operators_models_are_offered_by_name_and_a_caller_cannot_add_one(tmp_path):
    from globe_train.demo import DemoError, Locator, choices

    folder = tmp_path / "private" / "runs" / "globe"
    folder.mkdir(parents=True)
    offered = choices([str(folder), "globe-project/GLOBE-InternVL3-8B"], "http://10.0.0.5:8000/v1", "globe")
    assert [c.label for c in offered] == ["globe (endpoint)", "globe", "globe-project/GLOBE-InternVL3-8B"]
    assert [c.label for c in choices([])] == ["globe-project/GLOBE-Qwen2.5VL-7B", "globe-project/GLOBE-InternVL3-8B"]
    locator = Locator(offered, "ours")
    for label in (str(folder), "http://127.0.0.1:9/v1", "../globe"):
        with pytest.raises(DemoError, match="this demo offers: globe \\(endpoint\\), globe, globe-project") as exc:
            locator.predictor(label, "ours")
        assert str(tmp_path) not in str(exc.value).split("offers:")[1]
    with pytest.raises(DemoError, match="no protocol"):
        locator.predictor("globe", "mine")
    with pytest.raises(ValueError, match="same name"):
        choices([str(folder), str(tmp_path / "globe")] if (tmp_path / "globe").mkdir() is None else [])


@pytest.mark.skipif(not shutil.which("chromium"), reason="no chromium (Debian's package) for the browser test")
@pytest.mark.slow
def test_a_finished_prediction_in_headless_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    with (
        TeacherServer(lambda image, request: ANSWER) as server,
        Demo(tmp_path, "--endpoint", server.url, "--endpoint-model", "globe") as demo,
        sync_playwright() as pw,
    ):
        browser = pw.chromium.launch(
            executable_path=shutil.which("chromium"),
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(demo.url)
        page.locator("input[type=file]").first.set_input_files(str(KYOTO))
        page.get_by_role("button", name="Where was it taken?").click()
        page.wait_for_function("document.querySelector('#answer textarea')?.value === 'Kyoto, Japan'", timeout=60_000)
        page.wait_for_function("document.querySelector('#map img')?.naturalWidth === 900", timeout=60_000)
        shot = tmp_path / "demo.png"
        page.screenshot(path=str(shot), full_page=True)
        text = page.locator("#details").inner_text()
        browser.close()
    assert "Distance:" in text and "Photo's GPS" in text
    image = Image.open(shot).convert("RGB")
    assert image.width >= 1000 and len(image.getcolors(1 << 20) or []) > 50  # a rendered page, not a blank one


@pytest.mark.slow
def test_the_space_folder_and_its_upload(tmp_path):
    import yaml

    from globe_train.push import stage_space

    files = stage_space(tmp_path / "space")
    assert {
        "app.py",
        "requirements.txt",
        "README.md",
        "examples/kyoto.jpg",
        "globe_train/demo.py",
        "mp16_reason/worldmap.py",
        "cards/model_card.md",
    } <= set(files)
    assert not any("__pycache__" in f or f.startswith("globe_train/space/") for f in files)
    text = (tmp_path / "space" / "README.md").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    with HubWriteServer() as hub:
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.endpoint,
            "HF_HOME": str(tmp_path / "hf"),
            "HF_TOKEN": "hf_x",
            "HF_HUB_DISABLE_XET": "1",
        }
        env.pop("HF_HUB_OFFLINE", None)
        done = subprocess.run(
            [sys.executable, "-m", "globe_train.cli", "push", "--space", "--repo", "me/globe-demo"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        tree = hub.tree("spaces/me/globe-demo")
    assert {"app.py", "requirements.txt", "README.md", "globe_train/demo.py"} <= set(tree)
