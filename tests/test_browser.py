"""A real browser on the real page: Debian's headless Chromium driven by Selenium (chromium-driver).

The test starts the app (real Inpainter, width-4 generator) with uvicorn on a free 127.0.0.1 port, opens a
real photo (scikit-image's chelsea), paints a stroke and a structure line, clicks Inpaint and reads the
canvas pixels back: they must be the photo's exactly outside the stroke and changed inside it. It then
checks before/after, undo/redo across an inpainting, a second edit on the result, and the download.
Screenshots go to pytest's tmp folder, and also to $CTSDG_SCREENSHOT_DIR when set (docs/images); then the
server runs the bundled model, so the pictures show a real fill.

Skipped, with the reason shown, only where no Chromium / chromedriver / selenium is installed
(`.ci/run` installs Debian's chromium and chromium-driver when they are missing).
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="no Chromium: install Debian's `chromium chromium-driver` (apt-get install -y chromium chromium-driver)",
)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
pytest.importorskip("uvicorn")

from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.actions import interaction  # noqa: E402
from selenium.webdriver.common.actions.action_builder import ActionBuilder  # noqa: E402
from selenium.webdriver.common.actions.pointer_input import PointerInput  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def chromium(tmp_path: Path):
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--force-device-scale-factor=1", "--window-size=1280,820",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console errors, CSP violations
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def canvas_pixels(driver, element_id: str) -> np.ndarray:
    """RGBA uint8 (H, W, 4) of a canvas, read through a PNG data URL (lossless)."""
    url = driver.execute_script(f"return document.getElementById('{element_id}').toDataURL('image/png');")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGBA"))


def drag(driver, element, points: list[tuple[int, int]], shift: bool = False) -> None:
    """Press at points[0] (offsets from the element's centre, CSS px), move through the rest, release."""
    from selenium.webdriver.common.keys import Keys

    chain = ActionChains(driver, duration=20)
    if shift:
        chain.key_down(Keys.SHIFT)
    chain.move_to_element_with_offset(element, *points[0]).click_and_hold()
    prev = points[0]
    for p in points[1:]:
        chain.move_by_offset(p[0] - prev[0], p[1] - prev[1])
        prev = p
    chain.release()
    if shift:
        chain.key_up(Keys.SHIFT)
    chain.perform()


def screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    assert driver.save_screenshot(str(path)), "screenshot failed"
    out_dir = os.environ.get("CTSDG_SCREENSHOT_DIR")
    if out_dir:
        shutil.copyfile(path, Path(out_dir) / name)
    return path


def open_photo(driver, url: str, path) -> None:
    """Load the page at ``url``, open the photo file ``path`` with the file input and wait until it is shown."""
    driver.get(url)
    driver.find_element(By.ID, "file").send_keys(str(path))
    WebDriverWait(driver, 20).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "ready")


def wait_runs(driver, n: int, timeout: float = 120) -> None:
    def done(d):
        body = d.find_element(By.TAG_NAME, "body")
        if body.get_attribute("data-errors"):
            raise AssertionError("the page reported: " + d.find_element(By.ID, "status-message").text)
        return body.get_attribute("data-runs") == str(n) and body.get_attribute("data-state") == "ready"

    WebDriverWait(driver, timeout, poll_frequency=0.1).until(done)


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory) -> tuple[Path, np.ndarray]:
    from skimage import data

    # a real photo, halved to 226 x 150 so the width-4 model runs at 256 x 256 (seconds on a busy CPU)
    photo = np.asarray(Image.fromarray(data.chelsea()).resize((226, 150), Image.LANCZOS))
    path = tmp_path_factory.mktemp("photo") / "chelsea.png"
    Image.fromarray(photo).save(path)
    return path, photo


def test_paint_inpaint_compare_undo_and_download_in_chromium(tmp_path, photo_file, server_thread):
    from ctsdg import Generator, ModelConfig
    from ctsdg.inference import Inpainter
    from ctsdg.serve import create_app

    config = ModelConfig(base_width=4)
    inpainter = Inpainter(Generator(config), config)
    if os.environ.get("CTSDG_SCREENSHOT_DIR"):  # the docs' screenshots show the bundled model's fill
        inpainter = Inpainter.from_pretrained("small")
    path, photo = photo_file

    with server_thread(create_app(inpainter)) as server:
        driver = chromium(tmp_path)
        try:
            driver.get(server.url)
            WebDriverWait(driver, 20).until(lambda d: "Model: CTSDG" in d.find_element(By.ID, "status-model").text)
            assert driver.find_element(By.ID, "dropzone").is_displayed()
            screenshot(driver, tmp_path, "serve-empty.png")
            driver.find_element(By.ID, "file").send_keys(str(path))
            WebDriverWait(driver, 20).until(
                lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "ready")

            shown = canvas_pixels(driver, "image-layer")
            np.testing.assert_array_equal(shown[..., :3], photo)  # opened losslessly, no colour conversion
            assert driver.find_element(By.ID, "run").get_attribute("disabled")  # nothing painted yet

            wrap = driver.find_element(By.ID, "canvas-wrap")
            drag(driver, wrap, [(-120, -40), (-80, -30), (-40, -35), (0, -20), (30, -25)])
            driver.find_element(By.CSS_SELECTOR, '[data-tool="line"]').click()
            drag(driver, wrap, [(-110, -28), (20, -36)], shift=True)  # a straight structure line in the hole
            driver.find_element(By.CSS_SELECTOR, '[data-tool="brush"]').click()

            alpha = canvas_pixels(driver, "mask-layer")[..., 3]
            edges = canvas_pixels(driver, "edge-layer")[..., 3]
            assert (alpha > 135).sum() > 300, "the stroke did not reach the mask layer"
            assert (edges > 0).sum() > 50, "the structure line did not reach the edge layer"
            screenshot(driver, tmp_path, "serve-painting.png")

            driver.find_element(By.ID, "run").click()
            wait_runs(driver, 1)
            result = canvas_pixels(driver, "image-layer")[..., :3]
            outside, inside = alpha < 120, alpha > 135  # the server binarises at 127; skip the anti-aliased rim
            np.testing.assert_array_equal(result[outside], photo[outside])
            assert np.abs(result[inside].astype(int) - photo[inside]).mean() > 3, "nothing changed in the stroke"
            assert not canvas_pixels(driver, "mask-layer")[..., 3].any()  # a fresh mask for the next edit

            # before/after: the slider reveals the photo from the left
            driver.execute_script("const c = document.getElementById('compare'); c.value = 100;"
                                  "c.dispatchEvent(new Event('input'));")
            before = canvas_pixels(driver, "image-layer")[..., :3]
            np.testing.assert_array_equal(before[:, : photo.shape[1] - 4], photo[:, : photo.shape[1] - 4])
            driver.execute_script("const c = document.getElementById('compare'); c.value = 25;"
                                  "c.dispatchEvent(new Event('input'));")
            screenshot(driver, tmp_path, "serve-compare.png")
            driver.execute_script("const c = document.getElementById('compare'); c.value = 0;"
                                  "c.dispatchEvent(new Event('input'));")
            np.testing.assert_array_equal(canvas_pixels(driver, "image-layer")[..., :3], result)

            # undo the inpainting: the photo and its strokes come back; redo: the result again
            driver.find_element(By.ID, "undo").click()
            np.testing.assert_array_equal(canvas_pixels(driver, "image-layer")[..., :3], photo)
            np.testing.assert_array_equal(canvas_pixels(driver, "mask-layer")[..., 3], alpha)
            driver.find_element(By.ID, "redo").click()
            np.testing.assert_array_equal(canvas_pixels(driver, "image-layer")[..., :3], result)

            # keep editing on the result: a second stroke elsewhere, inpainted on top of the first result
            drag(driver, wrap, [(60, 60), (100, 70)])
            alpha2 = canvas_pixels(driver, "mask-layer")[..., 3]
            driver.find_element(By.ID, "run").click()
            wait_runs(driver, 2)
            result2 = canvas_pixels(driver, "image-layer")[..., :3]
            np.testing.assert_array_equal(result2[alpha2 < 120], result[alpha2 < 120])
            assert np.abs(result2[alpha2 > 135].astype(int) - result[alpha2 > 135]).mean() > 3

            # download: the link holds exactly the current image as PNG
            WebDriverWait(driver, 10).until(
                lambda d: d.find_element(By.ID, "download").get_attribute("aria-disabled") == "false")
            data_url = driver.execute_async_script(
                "const done = arguments[0];"
                "fetch(document.getElementById('download').href).then(r => r.blob()).then(b => {"
                "  const f = new FileReader(); f.onload = () => done(f.result); f.readAsDataURL(b); })"
                ".catch(e => done('error: ' + e));")
            assert data_url.startswith("data:image/png;base64,"), data_url
            downloaded = np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))
            np.testing.assert_array_equal(downloaded, result2)
            assert driver.find_element(By.ID, "download").get_attribute("download") == "inpainted.png"
            assert console_errors(driver) == []  # no script error, no CSP violation, no failed asset
        finally:
            driver.quit()


def test_server_errors_are_shown_on_the_page(tmp_path, photo_file, server_thread):
    """A photo over the server's pixel limit is refused by the page before upload, with the limit shown."""
    from ctsdg.serve import ServeLimits, create_app

    class RefuseEverything:  # TEST DOUBLE: never called, the page refuses first
        def __call__(self, image, mask, *, extra_edges=None, strategy=None):
            raise AssertionError("must not be called")

        def describe(self):
            return {"architecture": "test double"}

    path, photo = photo_file
    with server_thread(create_app(RefuseEverything(), limits=ServeLimits(max_pixels=20_000))) as server:
        driver = chromium(tmp_path)
        try:
            driver.get(server.url)
            WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "status-model").text != "Model: …")
            driver.find_element(By.ID, "file").send_keys(str(path))
            message = WebDriverWait(driver, 20).until(
                lambda d: d.find_element(By.ID, "status-message").text or None)
            assert "226 × 150" in message and "0.02 MP" in message, message
            assert driver.find_element(By.ID, "status-message").get_attribute("class") == "error"
            assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "empty"
        finally:
            driver.quit()


def test_an_api_error_is_shown_and_the_image_kept(tmp_path, photo_file, server_thread):
    """The server answers 422 with a message: the page shows it as an error and keeps the photo and strokes."""
    from ctsdg.serve import create_app

    class Refuses:  # TEST DOUBLE: refuses like a model whose boundary check fails
        calls = 0

        def __call__(self, image, mask, *, extra_edges=None, strategy=None):
            Refuses.calls += 1
            raise ValueError("this test double refuses every mask; paint less")

        def describe(self):
            return {"architecture": "test double"}

    path, photo = photo_file
    with server_thread(create_app(Refuses())) as server:
        driver = chromium(tmp_path)
        try:
            open_photo(driver, server.url, path)
            wrap = driver.find_element(By.ID, "canvas-wrap")
            fit_width = wrap.size["width"]
            driver.find_element(By.ID, "zoom-in").click()
            driver.find_element(By.ID, "zoom-in").click()
            assert abs(wrap.size["width"] - 2.25 * fit_width) <= 2  # two steps of 1.5x
            # zoomed and scrolled, a click must still land on the photo pixel under the pointer
            x, y = driver.execute_script(
                "const r = document.getElementById('image-layer').getBoundingClientRect();"
                "const s = document.getElementById('stage').getBoundingClientRect();"
                "const x = r.left + (150.5 / 226) * r.width, y = r.top + (60.5 / 150) * r.height;"
                "if (x < s.left || x > s.right || y < s.top || y > s.bottom) return [null, null];"
                "return [x, y];")
            assert x is not None, "pixel (150, 60) should be in view after zooming on the centre"
            from selenium.webdriver.common.actions.action_builder import ActionBuilder

            ab = ActionBuilder(driver)
            ab.pointer_action.move_to_location(int(round(x)), int(round(y)))
            ab.pointer_action.pointer_down()
            ab.pointer_action.pointer_up()
            ab.perform()
            dot = canvas_pixels(driver, "mask-layer")[..., 3]
            assert dot[60, 150] > 200 and dot.sum() > 0
            ys, xs = np.nonzero(dot)
            assert abs(xs.mean() - 150.5) < 1.5 and abs(ys.mean() - 60.5) < 1.5  # centred on the pixel
            driver.find_element(By.ID, "zoom-fit").click()
            assert abs(wrap.size["width"] - fit_width) <= 1

            drag(driver, wrap, [(-50, 0), (50, 10)])
            alpha = canvas_pixels(driver, "mask-layer")[..., 3]
            driver.find_element(By.ID, "run").click()
            WebDriverWait(driver, 60).until(
                lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-errors") == "1")
            status = driver.find_element(By.ID, "status-message")
            assert status.text == "this test double refuses every mask; paint less"
            assert status.get_attribute("class") == "error"
            assert Refuses.calls == 1
            np.testing.assert_array_equal(canvas_pixels(driver, "image-layer")[..., :3], photo)
            np.testing.assert_array_equal(canvas_pixels(driver, "mask-layer")[..., 3], alpha)  # strokes kept
            assert driver.find_element(By.ID, "run").is_enabled()  # try again after editing

            # the OpenAPI page renders offline, from the app's own assets
            driver.get(server.url + "docs")
            WebDriverWait(driver, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= 3)
            text = driver.find_element(By.TAG_NAME, "body").text
            assert "/api/v1/inpaint" in text and "/api/v1/health" in text and "/api/v1/model" in text
        finally:
            driver.quit()


@pytest.mark.slow
def test_a_large_photo_goes_through_the_page_with_the_crop_strategy(tmp_path, server_thread):
    """An 8.7-megapixel photo (chelsea upscaled 8x): uploaded at full resolution, filled through the
    inpainter's crop strategy (one box around the stroke), known pixels identical. Run with -m slow."""
    from skimage import data

    from ctsdg import Generator, ModelConfig
    from ctsdg.inference import Inpainter
    from ctsdg.serve import create_app

    photo = np.asarray(Image.fromarray(data.chelsea()).resize((3608, 2400), Image.BICUBIC))
    path = tmp_path / "large.png"
    Image.fromarray(photo).save(path)
    config = ModelConfig(base_width=4)
    inpainter = Inpainter(Generator(config), config)
    with server_thread(create_app(inpainter)) as server:
        driver = chromium(tmp_path)
        try:
            driver.get(server.url)
            driver.find_element(By.ID, "file").send_keys(str(path))
            WebDriverWait(driver, 60).until(
                lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "ready")
            assert "3608 × 2400" in driver.find_element(By.ID, "status-image").text
            drag(driver, driver.find_element(By.ID, "canvas-wrap"), [(-40, 0), (40, 5)])
            alpha = canvas_pixels(driver, "mask-layer")[..., 3]
            hole = alpha > 127
            assert inpainter.choose_strategy(hole) == "crop"
            t0 = time.monotonic()
            driver.find_element(By.ID, "run").click()
            wait_runs(driver, 1, timeout=300)
            elapsed = time.monotonic() - t0
            result = canvas_pixels(driver, "image-layer")[..., :3]
            np.testing.assert_array_equal(result[alpha < 120], photo[alpha < 120])
            assert np.abs(result[alpha > 135].astype(int) - photo[alpha > 135]).mean() > 3
            print(f"8.7 MP photo: inpaint round trip {elapsed:.1f} s")
        finally:
            driver.quit()


def test_the_blend_switch_starts_at_the_servers_blend_and_is_sent_with_each_run(tmp_path, photo_file, server_thread):
    """The Blend switch shows the server's --blend, and each run sends what it shows: on = poisson (the
    fill meets the photo's level around the hole), off = none (the raw output). Both fills keep every
    pixel outside the stroke, and they differ inside it."""
    from ctsdg import Generator, ModelConfig
    from ctsdg.inference import Inpainter
    from ctsdg.serve import create_app

    seen = []

    class Recording(Inpainter):
        def __call__(self, image, mask, **options):
            seen.append(options.get("blend"))
            return super().__call__(image, mask, **options)

    config = ModelConfig(base_width=4)
    path, photo = photo_file
    for server_blend in ("none", "poisson"):
        seen.clear()
        with server_thread(create_app(Recording(Generator(config), config, blend=server_blend))) as server:
            driver = chromium(tmp_path)
            try:
                driver.get(server.url)
                WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "blend-switch").is_displayed())
                switch = driver.find_element(By.ID, "blend")
                assert switch.is_selected() == (server_blend == "poisson")
                driver.find_element(By.ID, "file").send_keys(str(path))
                WebDriverWait(driver, 20).until(
                    lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "ready")
                wrap = driver.find_element(By.ID, "canvas-wrap")
                results = []
                for run in (1, 2):
                    drag(driver, wrap, [(-60, -10), (-20, 0), (20, -5)])
                    alpha = canvas_pixels(driver, "mask-layer")[..., 3]
                    base = canvas_pixels(driver, "image-layer")[..., :3]
                    driver.find_element(By.ID, "run").click()
                    wait_runs(driver, run)
                    result = canvas_pixels(driver, "image-layer")[..., :3]
                    np.testing.assert_array_equal(result[alpha < 120], base[alpha < 120])
                    results.append((result, alpha > 135))
                    if run == 1:
                        switch.click()  # flip it for the second run
                        driver.find_element(By.ID, "undo").click()  # back to the photo and the same stroke
                        driver.find_element(By.ID, "clear").click()
                other = "none" if server_blend == "poisson" else "poisson"
                assert seen == [server_blend, other]
                (first, inside), (second, _) = results
                assert np.abs(first[inside].astype(int) - second[inside]).max() > 0, "both runs gave one fill"
                assert console_errors(driver) == []
            finally:
                driver.quit()


def test_on_a_phone_the_page_fits_the_screen_and_the_status_gets_its_own_line(tmp_path, photo_file, server_thread):
    from ctsdg import Generator, ModelConfig
    from ctsdg.inference import Inpainter
    from ctsdg.serve import create_app

    config = ModelConfig(base_width=4)
    with server_thread(create_app(Inpainter(Generator(config), config))) as server:
        driver = chromium(tmp_path)
        try:
            driver.set_window_size(390, 844)  # a phone's CSS pixels
            driver.get(server.url)
            WebDriverWait(driver, 20).until(lambda d: "Model: CTSDG" in d.find_element(By.ID, "status-model").text)
            fits = driver.execute_script(
                "const s = document.getElementById('stage'), z = document.getElementById('dropzone');"
                "return [s.scrollWidth, s.clientWidth, z.getBoundingClientRect().right, window.innerWidth,"
                "        document.documentElement.scrollWidth];")
            stage_scroll, stage_width, zone_right, viewport, page_width = fits
            assert stage_scroll <= stage_width and zone_right <= viewport and page_width <= viewport, fits
            screenshot(driver, tmp_path, "serve-phone-empty.png")

            driver.find_element(By.ID, "file").send_keys(str(photo_file[0]))
            WebDriverWait(driver, 20).until(
                lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "ready")
            rects = driver.execute_script(
                "return ['status-message', 'status-image'].map(id => {"
                "  const r = document.getElementById(id).getBoundingClientRect();"
                "  return [r.top, r.bottom, r.width]; });")
            (message_top, message_bottom, message_width), (image_top, _, _) = rects
            assert "Opened" in driver.find_element(By.ID, "status-message").text
            assert message_width >= 0.9 * (viewport - 28) and message_bottom <= image_top, rects  # a line above
            assert driver.execute_script("return document.getElementById('stage').scrollWidth") <= stage_width

            assert not canvas_pixels(driver, "mask-layer")[..., 3].any()  # a finger paints (pointer events)
            finger = ActionBuilder(driver, mouse=PointerInput(interaction.POINTER_TOUCH, "finger"))
            wrap = driver.find_element(By.ID, "canvas-wrap")
            finger.pointer_action.move_to(wrap, -40, 0).pointer_down().move_to(wrap, 0, 10).move_to(wrap, 40, 0)
            finger.pointer_action.pointer_up()
            finger.perform()
            assert canvas_pixels(driver, "mask-layer")[..., 3].any()
            assert not driver.find_element(By.ID, "run").get_attribute("disabled")
            screenshot(driver, tmp_path, "serve-phone-painted.png")
            assert not console_errors(driver)
        finally:
            driver.quit()


def touch(driver, kind: str, points: list[tuple[float, float]]) -> None:
    """A real touch event through Chromium's DevTools protocol (pointer events of type "touch" follow): ``kind``
    touchStart, touchMove or touchEnd, ``points`` the fingers down after it (viewport CSS px, finger i has id i)."""
    driver.execute_cdp_cmd("Input.dispatchTouchEvent", {
        "type": kind, "touchPoints": [{"x": x, "y": y, "id": i} for i, (x, y) in enumerate(points)]})


def view_of_the_photo(driver) -> dict:
    """The stage's scroll offsets and the photo's displayed rectangle."""
    return driver.execute_script(
        "const s = document.getElementById('stage'), r = document.getElementById('image-layer').getBoundingClientRect();"
        "return {left: s.scrollLeft, top: s.scrollTop, x: r.left, y: r.top, width: r.width, height: r.height};")


def two_finger_drag(driver, start: tuple[tuple[float, float], ...], end: tuple[tuple[float, float], ...],
                    steps: int = 6) -> None:
    """One finger down, a second beside it, both moved in steps from ``start`` to ``end``, then lifted."""
    touch(driver, "touchStart", [start[0]])
    touch(driver, "touchStart", list(start))
    for k in range(1, steps + 1):
        t = k / steps
        touch(driver, "touchMove", [(a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]))
                                    for a, b in zip(start, end, strict=True)])
    touch(driver, "touchEnd", [])


def test_on_a_touch_screen_two_fingers_pan_and_pinch_a_zoomed_photo_and_one_finger_paints(tmp_path, photo_file,
                                                                                          server_thread):
    """QA: on a phone a zoomed photo could not be panned (the canvas takes every touch, so that a finger paints, and
    a touch screen has no wheel). Two fingers now move the photo with them and pinch it about their midpoint; the
    stroke the first finger began is dropped, and nothing is painted or added to the history by the gesture."""
    from ctsdg import Generator, ModelConfig
    from ctsdg.inference import Inpainter
    from ctsdg.serve import create_app

    config = ModelConfig(base_width=4)
    with server_thread(create_app(Inpainter(Generator(config), config))) as server:
        driver = chromium(tmp_path)
        try:
            driver.set_window_size(390, 844)  # a phone's CSS pixels
            driver.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True, "maxTouchPoints": 5})
            open_photo(driver, server.url, photo_file[0])
            for _ in range(2):
                driver.find_element(By.ID, "zoom-in").click()  # 2.25 × the fitted size: wider than the screen
            before = view_of_the_photo(driver)
            stage = driver.execute_script("const r = document.getElementById('stage').getBoundingClientRect();"
                                          "return [r.left + r.width / 2, r.top + r.height / 2];")
            cx, cy = stage
            assert before["width"] > 2 * driver.execute_script("return window.innerWidth") * 0.8, before

            # pan: both fingers 40 px left and 30 px up, so the photo follows them
            two_finger_drag(driver, ((cx - 30, cy), (cx + 30, cy)), ((cx - 70, cy - 30), (cx - 10, cy - 30)))
            panned = view_of_the_photo(driver)
            assert abs(panned["left"] - before["left"] - 40) <= 2 and abs(panned["top"] - before["top"] - 30) <= 2, (
                before, panned)
            assert abs(panned["width"] - before["width"]) <= 1  # the distance did not change: no zoom
            assert not canvas_pixels(driver, "mask-layer")[..., 3].any()  # the first finger's stroke was dropped
            assert driver.find_element(By.ID, "undo").get_attribute("disabled")  # and nothing entered the history

            # pinch: the fingers' distance doubles about the stage's centre; the photo point there stays there
            fx = (cx - panned["x"]) / panned["width"]
            fy = (cy - panned["y"]) / panned["height"]
            two_finger_drag(driver, ((cx - 30, cy), (cx + 30, cy)), ((cx - 60, cy), (cx + 60, cy)))
            pinched = view_of_the_photo(driver)
            assert 1.9 < pinched["width"] / panned["width"] < 2.1, (panned, pinched)
            assert abs((cx - pinched["x"]) / pinched["width"] - fx) < 0.01
            assert abs((cy - pinched["y"]) / pinched["height"] - fy) < 0.01
            assert not canvas_pixels(driver, "mask-layer")[..., 3].any()
            screenshot(driver, tmp_path, "serve-phone-pinched.png")

            # once the fingers are up, one finger paints again
            touch(driver, "touchStart", [(cx - 20, cy)])
            for k in range(1, 6):
                touch(driver, "touchMove", [(cx - 20 + 8 * k, cy + 2 * k)])
            touch(driver, "touchEnd", [])
            assert canvas_pixels(driver, "mask-layer")[..., 3].any()
            assert not driver.find_element(By.ID, "undo").get_attribute("disabled")
            assert not console_errors(driver)
        finally:
            driver.quit()


def test_erased_strokes_send_nothing_shortcuts_survive_a_click_and_a_drop_anywhere_opens(tmp_path, photo_file, server_thread):
    """QA of 2026-12-07: a structure line rubbed out with the eraser still went up as an edge map the server
    read as 'everywhere'; an erased mask came back as 'white everywhere'; after a click on the Blend switch no
    shortcut worked; a photo dropped on the toolbar did not open."""
    from selenium.webdriver.common.keys import Keys

    from ctsdg.serve import create_app

    class Records:  # TEST DOUBLE: fills with grey and records what it was given
        def __init__(self):
            self.calls = []

        def __call__(self, image, mask, *, extra_edges=None, strategy=None, **options):
            self.calls.append({"mask": mask.copy(), "edges": extra_edges})
            out = image.copy()
            out[mask > 127] = 128
            return out

        def describe(self):
            return {"architecture": "test double", "blend": "poisson"}

    double = Records()
    path, photo = photo_file
    with server_thread(create_app(double)) as server:
        driver = chromium(tmp_path)
        try:
            driver.get(server.url)
            WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "blend-switch").is_displayed())
            # a drop on the toolbar opens the photo (not only a drop on the stage)
            driver.execute_script(
                "const [b64, done] = arguments;"
                "const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));"
                "const dt = new DataTransfer(); dt.items.add(new File([bytes], 'chelsea.png', {type: 'image/png'}));"
                "document.querySelector('header.bar').dispatchEvent("
                "  new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));",
                base64.b64encode(path.read_bytes()).decode())
            WebDriverWait(driver, 20).until(
                lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "ready")
            np.testing.assert_array_equal(canvas_pixels(driver, "image-layer")[..., :3], photo)

            wrap = driver.find_element(By.ID, "canvas-wrap")
            drag(driver, wrap, [(-60, -30), (-20, -30)])  # the brush stroke
            driver.find_element(By.CSS_SELECTOR, '[data-tool="line"]').click()
            drag(driver, wrap, [(20, 40), (80, 40)], shift=True)  # a line away from it
            assert canvas_pixels(driver, "edge-layer")[..., 3].any()
            # the Blend switch clicked, then a key: the shortcut still works (E = eraser)
            driver.find_element(By.ID, "blend").click()
            ActionChains(driver).send_keys("e").perform()
            assert driver.find_element(By.CSS_SELECTOR, '[data-tool="eraser"]').get_attribute("aria-checked") == "true"
            driver.execute_script("const s = document.getElementById('size'); s.value = 160;"
                                  "s.dispatchEvent(new Event('input'));")
            drag(driver, wrap, [(10, 40), (50, 40), (90, 40)])  # rub the line out
            assert not (canvas_pixels(driver, "edge-layer")[..., 3] > 127).any()
            ActionChains(driver).send_keys(Keys.ENTER).perform()
            wait_runs(driver, 1)
            assert len(double.calls) == 1 and double.calls[0]["edges"] is None  # the erased line is no line
            assert 0 < (double.calls[0]["mask"] > 127).mean() < 0.2  # the stroke, not the whole picture

            ActionChains(driver).send_keys("b").perform()
            drag(driver, wrap, [(40, -50), (60, -50)])  # a stroke on the result, then rubbed out
            assert (canvas_pixels(driver, "mask-layer")[..., 3] > 127).any()
            ActionChains(driver).send_keys("e").perform()
            drag(driver, wrap, [(20, -50), (50, -50), (80, -50)])
            assert not (canvas_pixels(driver, "mask-layer")[..., 3] > 127).any()
            ActionChains(driver).send_keys(Keys.ENTER).perform()
            WebDriverWait(driver, 10).until(
                lambda d: "Nothing to fill" in d.find_element(By.ID, "status-message").text)
            assert len(double.calls) == 1  # said on the page, nothing sent
        finally:
            driver.quit()


def test_a_photo_file_without_an_extension_opens_by_its_bytes(tmp_path, photo_file, server_thread):
    from ctsdg.serve import create_app

    class Never:  # TEST DOUBLE: opening a photo calls no model
        def __call__(self, *args, **kwargs):
            raise AssertionError("must not be called")

        def describe(self):
            return {"architecture": "test double"}

    path, photo = photo_file
    bare = tmp_path / "chelsea_from_a_phone"  # no extension: the browser gives no type
    bare.write_bytes(path.read_bytes())
    (tmp_path / "notes").write_text("not a picture")
    with server_thread(create_app(Never())) as server:
        driver = chromium(tmp_path)
        try:
            driver.get(server.url)
            driver.find_element(By.ID, "file").send_keys(str(tmp_path / "notes"))
            WebDriverWait(driver, 20).until(
                lambda d: "is not a PNG, JPEG or WebP image" in d.find_element(By.ID, "status-message").text)
            driver.find_element(By.ID, "file").send_keys(str(bare))
            WebDriverWait(driver, 20).until(
                lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "ready")
            np.testing.assert_array_equal(canvas_pixels(driver, "image-layer")[..., :3], photo)
        finally:
            driver.quit()


def test_a_transparent_png_reaches_the_server_with_the_colours_it_stores(tmp_path, photo_file, server_thread):
    """The canvas premultiplies alpha, so the page sent a transparent pixel's stored colour as black, and the
    fill differed from what the API and the CLI give for the same file. An 8-bit RGBA PNG is now sent as
    it is; the server receives the stored colours everywhere."""
    from ctsdg import Generator, ModelConfig
    from ctsdg.inference import Inpainter
    from ctsdg.serve import create_app

    seen = []

    class Recording(Inpainter):
        def __call__(self, image, mask, **options):
            seen.append(np.asarray(image).copy())
            return super().__call__(image, mask, **options)

    _, photo = photo_file
    alpha = np.full(photo.shape[:2], 255, np.uint8)
    alpha[:, :60] = 0  # a transparent band on the left, its colours still stored
    alpha[100:, 150:] = 128
    path = tmp_path / "cut_out.png"
    Image.fromarray(np.dstack((photo, alpha)), "RGBA").save(path)
    config = ModelConfig(base_width=4)
    with server_thread(create_app(Recording(Generator(config), config))) as server:
        driver = chromium(tmp_path)
        try:
            open_photo(driver, server.url, path)
            drag(driver, driver.find_element(By.ID, "canvas-wrap"), [(10, -10), (40, 0)])
            driver.find_element(By.ID, "run").click()
            wait_runs(driver, 1)
            assert len(seen) == 1
            np.testing.assert_array_equal(seen[0], photo)  # the stored RGB, the transparent band included
            assert console_errors(driver) == []
        finally:
            driver.quit()
