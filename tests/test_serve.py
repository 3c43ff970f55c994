"""REST API and app tests (FastAPI TestClient, CPU, tiny images).

The success path runs the real :class:`ctsdg.inference.Inpainter` around a width-4 generator and checks the
API answer is bit-identical to calling the inpainter directly. Limits, queueing and error paths use
``MeanFillDouble``, a TEST DOUBLE (never shipped): it fills the hole with the mean known colour and records
what it was given, so the tests can block it, slow it, or make it fail on purpose.
"""

from __future__ import annotations

import io
import logging
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx2")  # what starlette.testclient uses
from fastapi.testclient import TestClient  # noqa: E402

from ctsdg.serve import ServeLimits, create_app, is_loopback  # noqa: E402

H, W = 96, 128


# ------------------------------------------------------------------------------------------------ helpers
class MeanFillDouble:
    """TEST DOUBLE: fills the hole (mask 255) with the mean known colour; records calls; can block/fail."""

    def __init__(self, describe: dict | None = None):
        self.calls: list[dict] = []
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()
        self.fail_with: Exception | None = None
        self._describe = describe or {"architecture": "test double", "checkpoint_sha256": "0" * 64,
                                      "mask_convention": "white (255) = fill, black (0) = keep"}

    def __call__(self, image, mask, *, extra_edges=None, strategy=None, **options):
        self.calls.append({"image": image.copy(), "mask": mask.copy(),
                           "extra_edges": None if extra_edges is None else extra_edges.copy(),
                           "strategy": strategy, "options": options})
        self.started.set()
        assert self.release.wait(10), "test double was never released"
        if self.fail_with is not None:
            raise self.fail_with
        out = image.copy()
        hole = mask > 127
        out[hole] = image[~hole].mean(axis=0).round().astype(np.uint8)
        return out

    def describe(self):
        return dict(self._describe)


def photo(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], axis=2)
    return np.clip(base + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def box_mask(h: int = H, w: int = W) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[h // 4: h // 2, w // 4: w // 2] = 255
    return m


def encode(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format=fmt)
    return buf.getvalue()


def files(image: bytes, mask: bytes | None, edges: bytes | None = None, image_type: str = "image/png",
          mask_type: str = "image/png") -> dict:
    out = {"image": ("photo.png", image, image_type)}
    if mask is not None:
        out["mask"] = ("mask.png", mask, mask_type)
    if edges is not None:
        out["edges"] = ("edges.png", edges, "image/png")
    return out


def png_header_only(width: int, height: int) -> bytes:
    """A syntactically valid PNG that *declares* width x height (RGB, 8 bit) with a few bytes of pixel data:
    what a decompression bomb looks like before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "message"}, body
    assert body["error"] == code, body
    assert body["message"] and "Traceback" not in body["message"] and "/work/" not in body["message"]
    return body


@pytest.fixture
def double():
    return MeanFillDouble()


@pytest.fixture
def client(double):
    with TestClient(create_app(double)) as c:
        yield c


def post(client, **kw):
    data = kw.pop("data", None)
    return client.post("/api/v1/inpaint", files=files(**kw), data=data)


# ------------------------------------------------------------------------------------------------ success
def test_inpaint_matches_the_real_inpainter_bit_for_bit():
    from ctsdg import Generator, ModelConfig
    from ctsdg.inference import Inpainter

    config = ModelConfig(base_width=4)
    inpainter = Inpainter(Generator(config), config)
    image, mask = photo(), box_mask()
    expected = inpainter(image, mask)
    with TestClient(create_app(inpainter)) as c:
        r = post(c, image=encode(image), mask=encode(mask))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert float(r.headers["x-elapsed-seconds"]) >= 0
    out = np.asarray(Image.open(io.BytesIO(r.content)))
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)
    hole = mask > 127
    np.testing.assert_array_equal(out[~hole], image[~hole])  # known pixels pass through exactly
    assert np.abs(out[hole].astype(int) - image[hole]).mean() > 1  # the hole was really filled


def test_a_request_may_choose_the_blend_and_the_real_inpainter_follows_it():
    from ctsdg import Generator, ModelConfig
    from ctsdg.inference import Inpainter

    config = ModelConfig(base_width=4)
    inpainter = Inpainter(Generator(config), config)  # server default: poisson
    image, mask = photo(), box_mask()
    with TestClient(create_app(inpainter)) as c:
        outs = {blend: np.asarray(Image.open(io.BytesIO(post(c, image=encode(image), mask=encode(mask),
                                                                data={"blend": blend}).content)))
                for blend in ("none", "poisson")}
    np.testing.assert_array_equal(outs["none"], inpainter(image, mask, blend="none"))
    np.testing.assert_array_equal(outs["poisson"], inpainter(image, mask))
    assert not np.array_equal(outs["none"], outs["poisson"])


def test_the_blend_field_is_passed_only_when_given_and_checked(client, double):
    assert post(client, image=encode(photo()), mask=encode(box_mask())).status_code == 200
    assert double.calls[-1]["options"] == {}  # inpainters that know no blend keep working
    assert post(client, image=encode(photo()), mask=encode(box_mask()), data={"blend": "none"}).status_code == 200
    assert double.calls[-1]["options"] == {"blend": "none"}
    body = assert_error(post(client, image=encode(photo()), mask=encode(box_mask()), data={"blend": "alpha"}),
                        422, "invalid_blend")
    assert "poisson" in body["message"]


def test_edges_reach_the_real_inpainter_and_change_the_fill():
    from ctsdg import Generator, ModelConfig
    from ctsdg.inference import Inpainter

    config = ModelConfig(base_width=4)
    inpainter = Inpainter(Generator(config), config)
    image, mask = photo(), box_mask()
    edges = np.zeros((H, W), np.uint8)
    edges[H // 4: H // 2, W // 3] = 255  # a vertical structure line through the hole
    with TestClient(create_app(inpainter)) as c:
        plain = post(c, image=encode(image), mask=encode(mask))
        steered = post(c, image=encode(image), mask=encode(mask), edges=encode(edges))
    assert plain.status_code == steered.status_code == 200
    a = np.asarray(Image.open(io.BytesIO(plain.content)))
    b = np.asarray(Image.open(io.BytesIO(steered.content)))
    np.testing.assert_array_equal(b, inpainter(image, mask, extra_edges=edges))
    assert (a != b).any(), "the structure line did not change the fill"
    hole = mask > 127
    np.testing.assert_array_equal(b[~hole], image[~hole])


def test_mask_and_edge_encodings_are_binarised_white_is_fill(client, double):
    image, mask = photo(), box_mask()
    # mask as RGB with grey anti-aliasing: only > 127 counts
    rgb_mask = np.repeat(mask[..., None], 3, axis=2)
    rgb_mask[0, 0] = 127  # not a hole
    rgb_mask[0, 1] = 128  # a hole
    # edges as a transparent brush layer (RGBA, black colour, opaque strokes), like a canvas export
    layer = np.zeros((H, W, 4), np.uint8)
    layer[30:40, 50, 3] = 255
    r = post(client, image=encode(image), mask=encode(rgb_mask), edges=encode(layer, mode="RGBA"),
             data={"strategy": "crop"})
    assert r.status_code == 200, r.text
    call = double.calls[-1]
    expected_mask = mask.copy()
    expected_mask[0, 1] = 255
    np.testing.assert_array_equal(call["mask"], expected_mask)
    expected_edges = np.zeros((H, W), np.uint8)
    expected_edges[30:40, 50] = 255
    np.testing.assert_array_equal(call["extra_edges"], expected_edges)
    assert call["strategy"] == "crop"
    np.testing.assert_array_equal(call["image"], image)


def test_jpeg_grey_and_rgba_photos_are_accepted_as_rgb(client, double):
    grey = photo()[..., 0]
    assert post(client, image=encode(grey), mask=encode(box_mask())).status_code == 200
    np.testing.assert_array_equal(double.calls[-1]["image"], np.repeat(grey[..., None], 3, axis=2))
    rgba = np.concatenate([photo(), np.full((H, W, 1), 9, np.uint8)], axis=2)
    assert post(client, image=encode(rgba, mode="RGBA"), mask=encode(box_mask())).status_code == 200
    np.testing.assert_array_equal(double.calls[-1]["image"], photo())
    r = post(client, image=encode(photo(), "JPEG"), mask=encode(box_mask()), image_type="image/jpeg")
    assert r.status_code == 200
    assert np.asarray(Image.open(io.BytesIO(r.content))).shape == (H, W, 3)


def test_cmyk_jpeg_is_seen_through_its_profile(client, double, cmyk_gray_icc):
    inks = np.array(Image.fromarray(photo()).convert("CMYK"))
    inks[..., 3] = 255 - photo()[..., 0]
    buf = io.BytesIO()
    Image.fromarray(inks, "CMYK").save(buf, format="JPEG", icc_profile=cmyk_gray_icc, quality=95)
    r = post(client, image=buf.getvalue(), mask=encode(box_mask()), image_type="image/jpeg")
    assert r.status_code == 200, r.text
    seen = double.calls[-1]["image"]
    assert seen.shape == (H, W, 3)
    assert (seen[..., 0] == seen[..., 1]).all() and (seen[..., 1] == seen[..., 2]).all()  # a black-ink-only press
    assert abs(seen[..., 0].astype(int) - photo()[..., 0]).mean() < 8  # L* = 100 (1 - K), K = 255 - red
    assert Image.open(io.BytesIO(r.content)).mode == "RGB"


def test_16_bit_grey_png_is_scaled_to_8_bits(client, double):
    # 8-bit v -> 257 v + 100 (at most 65535), which rounds back to v
    grey16 = np.minimum(photo()[..., 0].astype(np.uint32) * 257 + 100, 65535).astype(np.uint16)
    mask16 = box_mask().astype(np.uint16) * 257
    r = post(client, image=encode(grey16), mask=encode(mask16))
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(double.calls[-1]["image"], np.repeat(photo()[..., :1], 3, axis=2))
    np.testing.assert_array_equal(double.calls[-1]["mask"], box_mask())


def test_empty_edges_are_passed_as_none(client, double):
    r = post(client, image=encode(photo()), mask=encode(box_mask()), edges=encode(np.zeros((H, W), np.uint8)))
    assert r.status_code == 200
    assert double.calls[-1]["extra_edges"] is None


def test_health_and_model():
    double = MeanFillDouble({"architecture": "test double", "checkpoint": "/secret/dir/model.safetensors",
                             "checkpoint_sha256": "ab" * 32, "mask_convention": "white (255) = fill"})
    limits = ServeLimits(queue_size=3)
    with TestClient(create_app(double, limits=limits)) as c:
        assert c.get("/api/v1/health").json() == {"status": "ok", "running": 0, "queued": 0, "queue_size": 3}
        model = c.get("/api/v1/model").json()
    assert model["checkpoint_sha256"] == "ab" * 32
    assert model["mask_convention"] == "white (255) = fill"
    assert model["checkpoint"] == "model.safetensors"  # no server paths
    assert model["limits"]["queue_size"] == 3 and model["limits"]["max_pixels"] == limits.max_pixels


# ------------------------------------------------------------------------------------------------ bad input
def test_mask_of_another_size_is_refused(client, double):
    body = assert_error(post(client, image=encode(photo()), mask=encode(box_mask(H, W + 1))), 422, "size_mismatch")
    assert f"{W + 1}x{H}" in body["message"] and f"{W}x{H}" in body["message"]
    assert "EXIF" not in body["message"]
    turned = assert_error(post(client, image=encode(photo()), mask=encode(box_mask(W, H))), 422, "size_mismatch")
    assert "EXIF orientation" in turned["message"]  # the image's size turned by 90°: say why that may be
    edges = np.zeros((H + 2, W), np.uint8)
    assert_error(post(client, image=encode(photo()), mask=encode(box_mask()), edges=encode(edges)), 422,
                 "size_mismatch")
    assert not double.calls


def test_empty_and_full_masks_are_refused(client, double):
    assert_error(post(client, image=encode(photo()), mask=encode(np.zeros((H, W), np.uint8))), 422, "empty_mask")
    assert_error(post(client, image=encode(photo()), mask=encode(np.full((H, W), 255, np.uint8))), 422, "full_mask")
    assert not double.calls


def test_corrupt_and_truncated_png_are_refused(client, double):
    good = encode(photo())
    truncated = good[: len(good) // 2]
    assert_error(post(client, image=truncated, mask=encode(box_mask())), 422, "corrupt_image")
    flipped = bytearray(good)
    flipped[60:400] = bytes(340)  # header intact, pixel data destroyed (CRC / zlib errors)
    assert_error(post(client, image=bytes(flipped), mask=encode(box_mask())), 422, "corrupt_image")
    assert not double.calls


def test_decompression_bomb_header_is_refused_before_decoding(client, double):
    bomb = png_header_only(50_000, 50_000)
    assert len(bomb) < 200
    t0 = time.perf_counter()
    body = assert_error(post(client, image=bomb, mask=encode(box_mask())), 413, "too_many_pixels")
    assert time.perf_counter() - t0 < 2.0  # 2.5 gigapixels were never allocated
    assert "MP" in body["message"] and "downscale" in body["message"]
    assert_error(post(client, image=encode(photo()), mask=bomb), 413, "too_many_pixels")
    # under Pillow's own bomb threshold but over this server's 40 MP: refused by our header check
    body = assert_error(post(client, image=png_header_only(8000, 8000), mask=encode(box_mask())), 413,
                        "too_many_pixels")
    assert "8000x8000" in body["message"] and "40 MP" in body["message"]
    assert not double.calls


def test_the_servers_pixel_limit_holds_above_pillows_bomb_warning(double):
    # 9500x9500 = 90 MP: over Pillow's warning (89 MP), under this server's 100 MP and 12000 px a side.
    # The header passes; its few bytes of pixel data then fail to decode
    with TestClient(create_app(double, limits=ServeLimits(max_pixels=100_000_000))) as c:
        assert_error(post(c, image=png_header_only(9500, 9500), mask=encode(box_mask())), 422, "corrupt_image")
        body = assert_error(post(c, image=png_header_only(10_500, 10_000), mask=encode(box_mask())), 413,
                            "too_many_pixels")
        assert "10500x10000 (105.0 MP)" in body["message"] and "--max-megapixels" in body["message"]
        body = assert_error(post(c, image=png_header_only(20_000, 10), mask=encode(box_mask())), 413,
                            "too_many_pixels")
        # the side limit has no flag, so the message does not offer one
        assert "12000 px a side" in body["message"] and "--max-megapixels" not in body["message"]
    assert not double.calls


def test_non_images_are_refused(client, double):
    assert_error(post(client, image=b"hello, I am text", mask=encode(box_mask()), image_type="text/plain"), 415,
                 "unsupported_media_type")
    assert_error(post(client, image=b"hello, I am text", mask=encode(box_mask())), 415, "not_an_image")
    assert_error(post(client, image=b"%PDF-1.4 not an image", mask=encode(box_mask()),
                      image_type="application/octet-stream"), 415, "not_an_image")
    gif = io.BytesIO()
    Image.fromarray(photo()).save(gif, format="GIF")
    assert_error(post(client, image=gif.getvalue(), mask=encode(box_mask())), 415, "not_an_image")
    assert_error(post(client, image=encode(photo(), "JPEG"), mask=encode(box_mask())), 415,
                 "content_type_mismatch")
    assert_error(post(client, image=b"", mask=encode(box_mask())), 422, "empty_file")
    assert not double.calls


def test_missing_unknown_and_malformed_fields(client, double):
    assert_error(post(client, image=encode(photo()), mask=None), 422, "missing_field")
    r = client.post("/api/v1/inpaint", files={**files(encode(photo()), encode(box_mask())),
                                              "path": ("x", b"/etc/passwd", "text/plain")})
    assert_error(r, 422, "invalid_request")
    assert_error(client.post("/api/v1/inpaint", data={"image": "photo.png", "mask": "mask.png"}), 422,
                 "invalid_request")  # text fields, e.g. a path, are never opened
    assert_error(post(client, image=encode(photo()), mask=encode(box_mask()), data={"strategy": "../../x"}),
                 422, "invalid_strategy")
    r = client.post("/api/v1/inpaint", content=b'{"image": 1}', headers={"content-type": "application/json"})
    assert r.status_code in (400, 422) and set(r.json()) == {"error", "message"}
    assert_error(client.get("/api/v1/inpaint"), 405, "method_not_allowed")
    assert_error(client.get("/../etc/passwd"), 404, "not_found")
    assert not double.calls


def multipart_body(boundary: str, parts: dict[str, bytes]) -> bytes:
    body = b""
    for name, data in parts.items():
        body += (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
                 "Content-Type: image/png\r\n\r\n").encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def test_a_cut_off_multipart_body_is_400_not_a_missing_field(client, double):
    headers = {"content-type": "multipart/form-data; boundary=cut"}
    whole = multipart_body("cut", {"image": encode(photo()), "mask": encode(box_mask())})
    assert client.post("/api/v1/inpaint", content=whole, headers=headers).status_code == 200
    for body in (whole[: len(whole) // 3], whole[: -len(b"--cut--\r\n")]):  # within the image; no closing line
        r = client.post("/api/v1/inpaint", content=body, headers=headers)
        assert "cut off" in assert_error(r, 400, "bad_request")["message"]
    assert len(double.calls) == 1


def test_unknown_strategy_gets_the_inpainters_message():
    from ctsdg import Generator, ModelConfig
    from ctsdg.inference import Inpainter

    config = ModelConfig(base_width=4)
    with TestClient(create_app(Inpainter(Generator(config), config))) as c:
        body = assert_error(post(c, image=encode(photo()), mask=encode(box_mask()), data={"strategy": "magic"}),
                            422, "invalid_input")
    assert "strategy" in body["message"]


def test_model_failure_is_500_without_internals(double):
    double.fail_with = RuntimeError("secret /internal/path/weights.pt exploded")
    with TestClient(create_app(double)) as c:
        body = assert_error(post(c, image=encode(photo()), mask=encode(box_mask())), 500, "inference_failed")
    assert "secret" not in body["message"] and "/internal" not in body["message"]


# ------------------------------------------------------------------------------------------------ limits
def test_request_body_limit_by_content_length_and_by_streaming(double):
    limits = ServeLimits(max_request_bytes=20_000)
    big = encode(photo(128, 256, seed=1))
    assert len(big) > 20_000
    with TestClient(create_app(double, limits=limits)) as c:
        assert_error(post(c, image=big, mask=encode(box_mask(128, 256))), 413, "request_too_large")

        def chunks():  # no Content-Length: the guard counts what arrives
            for _ in range(50):
                yield b"x" * 1000

        r = c.post("/api/v1/inpaint", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
        assert_error(r, 413, "request_too_large")
    assert not double.calls


def test_pixel_limit(double):
    with TestClient(create_app(double, limits=ServeLimits(max_pixels=H * W - 1))) as c:
        assert_error(post(c, image=encode(photo()), mask=encode(box_mask())), 413, "too_many_pixels")
    with TestClient(create_app(double, limits=ServeLimits(max_side=W - 1))) as c:
        assert_error(post(c, image=encode(photo()), mask=encode(box_mask())), 413, "too_many_pixels")
    assert not double.calls


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def test_one_inference_at_a_time_and_a_full_queue_gets_429(double):
    double.release.clear()
    image, mask = encode(photo()), encode(box_mask())
    results: list[int] = []
    with TestClient(create_app(double, limits=ServeLimits(queue_size=1))) as c:
        threads = [threading.Thread(target=lambda: results.append(post(c, image=image, mask=mask).status_code))
                   for _ in range(2)]
        health = lambda: c.get("/api/v1/health").json()  # noqa: E731
        try:
            threads[0].start()
            wait_for(lambda: health()["running"] == 1)
            threads[1].start()
            # "queued" alone would also read 1 while the first request is admitted but not yet running
            wait_for(lambda: health()["queued"] == 1)
            assert health()["running"] == 1  # never two at once
            r = post(c, image=image, mask=mask)
            assert_error(r, 429, "busy")
            assert int(r.headers["retry-after"]) > 0
            # admission comes before decoding: a refused request costs no decoding (a corrupt file gets 429)
            assert_error(post(c, image=b"\x89PNG\r\n\x1a\n garbage", mask=mask), 429, "busy")
        finally:
            # a failed check must not close the client with requests in flight: TestClient then waits
            # forever for the responses its stopped portal can no longer deliver (a hang, not a failure)
            double.release.set()
            for t in threads:
                if t.ident is not None:
                    t.join(10)
        assert results == [200, 200]
        assert c.get("/api/v1/health").json() == {"status": "ok", "running": 0, "queued": 0, "queue_size": 1}
        assert post(c, image=image, mask=mask).status_code == 200  # capacity is back
    assert len(double.calls) == 3


def test_timeout_gets_504_and_the_slot_is_kept_until_the_model_returns(double):
    double.release.clear()
    with TestClient(create_app(double, limits=ServeLimits(timeout_s=0.3, queue_size=0))) as c:
        body = assert_error(post(c, image=encode(photo()), mask=encode(box_mask())), 504, "timeout")
        assert "0.3 s" in body["message"]
        # the model is still running: a new request is refused rather than piling up
        assert_error(post(c, image=encode(photo()), mask=encode(box_mask())), 429, "busy")
        double.release.set()
        wait_for(lambda: c.get("/api/v1/health").json()["running"] == 0)
        assert post(c, image=encode(photo()), mask=encode(box_mask())).status_code == 200


def test_limits_are_validated():
    with pytest.raises(ValueError, match="queue_size"):
        ServeLimits(queue_size=-1)
    with pytest.raises(ValueError, match="timeout_s"):
        ServeLimits(timeout_s=0)


def test_create_app_takes_one_model_source(double):
    with pytest.raises(ValueError, match="one of"):
        create_app(double, checkpoint="x.safetensors")
    with pytest.raises(TypeError, match="describe"):
        create_app(lambda image, mask: image)
    app = create_app(inpainter_factory=lambda: double)
    assert app.state.inpainter is double


def test_the_blend_reaches_the_bundled_model_and_shows_in_the_model_endpoint():
    with TestClient(create_app(checkpoint="small", blend="none")) as c:
        assert c.get("/api/v1/model").json()["blend"] == "none"
    with TestClient(create_app(checkpoint="small")) as c:
        assert c.get("/api/v1/model").json()["blend"] == "poisson"


# ------------------------------------------------------------------------------------------------ page & docs
def test_page_and_assets_are_served_locally_without_cdn(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert 'src="static/app.js"' in page.text
    for asset in ("static/app.js", "static/app.css", "static/favicon.svg"):
        r = client.get("/" + asset)
        assert r.status_code == 200, asset
    for text in (page.text, client.get("/static/app.js").text, client.get("/static/app.css").text):
        assert "http://" not in text and "https://" not in text  # no CDN, no external asset
    assert "<script>" not in page.text  # no inline script (the CSP forbids it)


def test_openapi_page_and_schema(client):
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "cdn." not in docs.text and "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    schema = client.get("/openapi.json").json()
    assert schema["openapi"].startswith("3.0.")  # the offline Swagger UI (4.x) cannot render 3.1
    paths = schema["paths"]
    assert {"/api/v1/inpaint", "/api/v1/health", "/api/v1/model"} <= set(paths)
    post_op = paths["/api/v1/inpaint"]["post"]
    body = post_op["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["image", "mask"] and "edges" in body["properties"]
    assert "image/png" in post_op["responses"]["200"]["content"]
    assert {"413", "415", "422", "429", "504"} <= set(post_op["responses"])


def test_every_error_the_server_emits_is_documented_with_its_status():
    """docs/serve.md's error table and the server agree, status for status and code for code."""
    import re
    from pathlib import Path

    import ctsdg.serve

    source = Path(ctsdg.serve.__file__).read_text()
    emitted = set(re.findall(r'(?:ApiError|error_response)\(\s*(\d{3}),\s*"([a-z_]+)"', source))
    emitted |= {("400", "bad_request"), ("404", "not_found"), ("405", "method_not_allowed")}  # Starlette's
    docs = Path(__file__).resolve().parents[1] / "docs" / "serve.md"
    table = docs.read_text().split("### Errors", 1)[1].split("\n## ", 1)[0]
    documented = set()
    for status_col, code_col in re.findall(r"^\| ([\d /]+) \| (.+?) \|", table, re.M):
        statuses, codes = re.findall(r"\d{3}", status_col), re.findall(r"`([a-z_]+)`", code_col)
        pairs = zip(statuses, codes, strict=True) if len(statuses) > 1 else ((statuses[0], c) for c in codes)
        documented |= set(pairs)
    assert emitted == documented


# ------------------------------------------------------------------------------------------------ CLI
def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.8.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")


@pytest.mark.parametrize("flags, message", [
    (["--max-megapixels", "-1"], "--max-megapixels must be a positive number, got -1"),
    (["--max-megapixels", "1e-7"], "--max-megapixels 1e-07 allows no pixel at all"),
    (["--max-upload-mb", "0"], "--max-upload-mb must be a positive number, got 0"),
    (["--timeout", "nan"], "--timeout must be a positive number, got nan"),
    (["--upload-timeout", "-5"], "--upload-timeout must be a positive number"),
    (["--queue-size", "-1"], "--queue-size must be >= 0"),
])
def test_cli_serve_refuses_limits_that_cannot_work_by_their_flag_names(capsys, flags, message):
    from ctsdg.cli import main

    assert main(["serve", *flags]) == 1  # before the model is loaded or the port bound
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("host, warns", [("127.0.0.1", False), ("0.0.0.0", True)])
def test_cli_serve_binds_loopback_by_default_and_warns_otherwise(monkeypatch, capsys, host, warns, double):
    import uvicorn

    import ctsdg.serve
    from ctsdg.cli import main

    seen = {}
    monkeypatch.setattr(ctsdg.serve, "create_app", lambda **kw: seen.setdefault("create", kw) and "app")
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.setdefault("run", kw))
    import socket

    from ctsdg.cli import build_parser

    defaults = build_parser().parse_args(["serve"])
    assert (defaults.host, defaults.port) == ("127.0.0.1", 7860)
    with socket.socket() as s:  # a free port, so the test does not depend on 7860 being free here
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["serve", "--port", str(port), "--queue-size", "2", "--max-megapixels", "1.5"]
    assert main(argv + ([] if host == "127.0.0.1" else ["--host", host])) == 0
    assert seen["run"]["host"] == host and seen["run"]["port"] == port
    assert seen["create"]["limits"] == ServeLimits(queue_size=2, max_pixels=1_500_000)
    assert ("warning" in capsys.readouterr().err) is warns


# ------------------------------------------------------------------------------------------------ real server
def test_slow_upload_gets_408_from_a_real_uvicorn_server(double, server_thread):
    """A raw socket sends the headers and then trickles the body."""
    import socket

    with server_thread(create_app(double, limits=ServeLimits(upload_timeout_s=0.5))) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
            conn.sendall(b"POST /api/v1/inpaint HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 100000\r\n\r\n"
                         b"--xyz\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n")
            t0 = time.monotonic()
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                try:
                    conn.sendall(b"x")  # one byte every 0.1 s: alive, but far too slow
                except OSError:
                    pass
                time.sleep(0.1)
                conn.settimeout(0.01)
                try:
                    answer += conn.recv(4096)
                except (TimeoutError, BlockingIOError):
                    pass
                assert time.monotonic() - t0 < 10, "no answer to a trickled upload"
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b'"error":"upload_timeout"' in answer
        assert 0.4 < time.monotonic() - t0 < 5
    assert not double.calls


def test_a_client_leaving_mid_upload_is_one_quiet_log_line(double, caplog, server_thread):
    import socket

    caplog.set_level(logging.INFO)
    with server_thread(create_app(double)) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
            conn.sendall(b"POST /api/v1/inpaint HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 100000\r\n\r\n"
                         b"--xyz\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n")
            time.sleep(0.2)
        wait_for(lambda: any("closed its connection" in r.getMessage() for r in caplog.records))
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert not double.calls


def test_large_photo_goes_through_the_crop_strategy():
    """A 1024x768 photo with a small hole: the real Inpainter picks `crop` (only a box around the hole runs
    through the network) and the API answer equals a direct call, known pixels untouched."""
    from ctsdg import Generator, ModelConfig
    from ctsdg.inference import Inpainter

    config = ModelConfig(base_width=4)
    inpainter = Inpainter(Generator(config), config, working_size=128)  # one 128x128 pass per box
    image = photo(768, 1024, seed=3)
    mask = np.zeros((768, 1024), np.uint8)
    mask[300:360, 500:590] = 255
    assert inpainter.choose_strategy(mask > 127) == "crop"
    with TestClient(create_app(inpainter)) as c:
        r = post(c, image=encode(image), mask=encode(mask))
    assert r.status_code == 200, r.text
    out = np.asarray(Image.open(io.BytesIO(r.content)))
    np.testing.assert_array_equal(out, inpainter(image, mask))
    np.testing.assert_array_equal(out[mask == 0], image[mask == 0])


def test_cli_serve_says_what_to_do_when_the_port_is_taken(monkeypatch, capsys):
    import socket

    import uvicorn

    import ctsdg.serve
    from ctsdg.cli import main

    monkeypatch.setattr(ctsdg.serve, "create_app", lambda **kw: pytest.fail("must fail before loading"))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: pytest.fail("must not start"))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err
