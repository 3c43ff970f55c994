"""The local web app and REST API: one HTML page (``static/``) and ``/api/v1`` (issue 6).

``create_app(...)`` builds a FastAPI app around anything that behaves like :class:`ctsdg.inference.Inpainter`
(see :class:`InpainterLike`); ``ctsdg serve`` runs it with uvicorn on 127.0.0.1:7860.

Endpoints
    * ``GET /``                  the page (no build step, no CDN: every asset comes from this app).
    * ``POST /api/v1/inpaint``   multipart ``image`` + ``mask`` [+ ``edges``] [+ ``strategy``] -> PNG.
    * ``GET /api/v1/health``     ``{"status": "ok", "running": 0|1, "queued": n, "queue_size": n}``.
    * ``GET /api/v1/model``      the inpainter's ``describe()`` (architecture, checkpoint sha256, mask
      convention, ...) plus ``"limits"``.
    * ``GET /docs``, ``GET /openapi.json``  the OpenAPI page FastAPI generates (Swagger UI served locally
      from the ``swagger-ui-bundle`` package).

Conventions (``conventions.py``): ``image`` is any PNG/JPEG/WebP photo (EXIF orientation applied, alpha
dropped); ``mask`` has the image's size and **white (> 127) = region to fill**; ``edges`` (optional) has the
image's size and white = a structure line the user drew, added to the structure stream's edge map. The
answer is a PNG of the image's size in which the known pixels are the input's, unchanged.

Safety (all in :class:`ServeLimits`): the request body is capped before it is parsed (413) and must
arrive within ``upload_timeout_s`` (408); each image's
pixel count is read from its header and refused before decoding (413, so a 50000x50000 "decompression
bomb" costs nothing); the declared content type and the actual bytes must both be PNG/JPEG/WebP (415);
corrupt or truncated files, size mismatches and empty masks are 422; one inference runs at a time per
model with at most ``queue_size`` requests waiting, the rest get 429 with ``Retry-After``; a request that
waits and runs longer than ``timeout_s`` gets 504. Nothing is read from or written to a path a request
names. Every error is JSON ``{"error": "<code>", "message": "<what to do>"}`` with nothing of the
server's internals (tracebacks go to the server log only).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import io
import ipaddress
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image, ImageOps, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .blend import BLENDS
from .conventions import hole_mask_from_uint8, hole_mask_to_uint8
from .images import cmyk_to_rgb

if TYPE_CHECKING:
    from .adapt import AdaptConfig

log = logging.getLogger("ctsdg.serve")

STATIC_DIR = Path(__file__).with_name("static")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
API = "/api/v1"

# What an upload may be: the declared multipart content type (browsers and curl send these) and what
# Pillow finds in the bytes. application/octet-stream is accepted for generic clients; the bytes decide.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
DECLARED_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/webp": "WEBP"}
GENERIC_TYPES = ("", "application/octet-stream")
UPLOAD_FIELDS = ("image", "mask", "edges")
TEXT_FIELDS = ("strategy", "blend")


@dataclass(frozen=True)
class ServeLimits:
    """What one server accepts. Defaults suit a desktop; every one is a ``ctsdg serve`` option.

    Attributes:
        max_request_bytes: whole multipart body (image + mask + edges), refused before parsing (413).
        max_pixels: width x height of each uploaded image, read from its header before decoding (413).
        max_side: the longest side of each uploaded image (413).
        queue_size: requests allowed to wait behind the one that is running; more get 429.
        timeout_s: queue wait + inference for one request; past it the request gets 504.
        upload_timeout_s: receiving and parsing the multipart body; a client that trickles its upload
            slower than this gets 408 (so slow clients cannot hold the server).
    """

    max_request_bytes: int = 64 * 2**20
    max_pixels: int = 40_000_000
    max_side: int = 12_000
    queue_size: int = 4
    timeout_s: float = 300.0
    upload_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            minimum = 0 if field.name == "queue_size" else 1e-9
            if not isinstance(value, int | float) or value < minimum:
                raise ValueError(f"ServeLimits.{field.name} must be a number >= {minimum:g}, got {value!r}")


class InpainterLike(Protocol):
    """What the app needs from a model: :class:`ctsdg.inference.Inpainter` satisfies it.

    ``__call__(image, mask, *, extra_edges=None, strategy=None)``: image uint8 (H, W, 3); mask uint8 (H, W)
    with 255 = fill; extra_edges uint8 (H, W) with 255 = a user-drawn structure line, or None; strategy a
    name the inpainter knows, or None for its default. Returns uint8 (H, W, 3). Raises ValueError with a
    user-facing message for inputs it cannot handle. ``describe()`` returns a JSON-able dict. Only when a
    request names a blend is it called with ``blend="poisson"`` or ``"none"`` too.
    """

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, *, extra_edges: np.ndarray | None = None,
        strategy: str | None = None,
    ) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


class ApiError(Exception):
    """An error the client caused or can act on: becomes ``{"error": code, "message": message}``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1): only this machine can connect."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# ----------------------------------------------------------------------------------------------------------
# One inference at a time, a bounded queue behind it.


class InferenceGate:
    """Runs jobs one at a time on a single worker thread and admits at most ``1 + queue_size`` requests.

    A request is admitted (:meth:`admit`) once its upload is parsed and before its images are decoded,
    so a refused request costs no decoding; it then either hands its job to :meth:`run` or gives its
    slot back with :meth:`release`. Thread-safe and event-loop agnostic (plain ``threading`` state), so it
    works under uvicorn and under FastAPI's TestClient alike. A job's slot is released when the job ends
    or is cancelled while waiting; a job that is already running when its request times out keeps its
    slot until it finishes, so a slow model can never pile up more work than the limit.
    """

    def __init__(self, queue_size: int):
        self.queue_size = queue_size
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctsdg-infer")
        self._lock = threading.Lock()
        self._admitted = 0
        self._running = 0

    def admit(self) -> bool:
        """Take a slot; False when ``1 + queue_size`` are taken (the caller answers 429)."""
        with self._lock:
            if self._admitted >= 1 + self.queue_size:
                return False
            self._admitted += 1
            return True

    def release(self, _future: Any = None) -> None:
        """Give back an admitted slot (done automatically for jobs given to :meth:`run`)."""
        with self._lock:
            self._admitted -= 1

    def run(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Queue ``fn`` for an admitted request; its slot is released when the job ends or is cancelled."""

        def job() -> Any:
            with self._lock:
                self._running += 1
            try:
                return fn()
            finally:
                with self._lock:
                    self._running -= 1

        future = self._executor.submit(job)
        future.add_done_callback(self.release)
        return future

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"running": self._running, "queued": self._admitted - self._running,
                    "queue_size": self.queue_size}

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


# ----------------------------------------------------------------------------------------------------------
# Uploads -> arrays, checked at the boundary.


def open_checked(data: bytes, field: str, declared_type: str | None, limits: ServeLimits) -> Image.Image:
    """Decode one uploaded file after checking its type, header size and content.

    Args:
        data: the file's bytes.
        field: form field name, for messages.
        declared_type: the part's Content-Type.
        limits: pixel limits.

    Returns:
        The decoded (loaded) PIL image, EXIF orientation applied.

    Raises:
        ApiError: 415 not an image / wrong type, 413 too many pixels, 422 empty or corrupt.
    """
    declared = (declared_type or "").split(";")[0].strip().lower()
    if declared not in DECLARED_TYPES and declared not in GENERIC_TYPES:
        raise ApiError(415, "unsupported_media_type",
                       f"'{field}' was sent as {declared}; send a PNG, JPEG or WebP image")
    if not data:
        raise ApiError(422, "empty_file", f"'{field}' is an empty file; send a PNG, JPEG or WebP image")
    # The header's size is checked against this server's limits below, so Pillow's own bomb warning (at
    # 89 MP, whatever --max-megapixels says) is ignored; its error, at twice that, still stops the decode.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)  # reads the header only
    except Image.DecompressionBombError:
        pillow_most = 2 * Image.MAX_IMAGE_PIXELS
        raise ApiError(413, "too_many_pixels", f"'{field}' declares more than {pillow_most / 1e6:.0f} MP; this "
                       f"server accepts at most {min(limits.max_pixels, pillow_most) / 1e6:g} MP; downscale it") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ApiError(415, "not_an_image", f"'{field}' is not a PNG, JPEG or WebP image") from None
    width, height = im.size
    if max(width, height) > limits.max_side:
        raise ApiError(413, "too_many_pixels",
                       f"'{field}' is {width}x{height}; this server accepts at most {limits.max_side} px a side; "
                       "downscale it")
    if width * height > limits.max_pixels:
        raise ApiError(413, "too_many_pixels",
                       f"'{field}' is {width}x{height} ({width * height / 1e6:.1f} MP); this server accepts at "
                       f"most {limits.max_pixels / 1e6:g} MP; downscale it or start the server with a larger "
                       "--max-megapixels")
    if width < 1 or height < 1:
        raise ApiError(422, "corrupt_image", f"'{field}' has no pixels")
    if declared in DECLARED_TYPES and DECLARED_TYPES[declared] != im.format:
        raise ApiError(415, "content_type_mismatch",
                       f"'{field}' was sent as {declared} but its bytes are {im.format}; send the right type")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()
            im = ImageOps.exif_transpose(im)
    except Exception:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, zlib.error ... on bad data
        raise ApiError(422, "corrupt_image", f"'{field}' could not be decoded: the {im.format} file is "
                       "truncated or corrupt; export it again") from None
    return im


def multipart_closing_delimiter(content_type: str) -> bytes:
    """``--boundary--``, which ends a complete multipart body, or b"" when ``content_type`` names no boundary."""
    from email.message import Message

    header = Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary") if header.get_content_type() == "multipart/form-data" else None
    return b"--" + boundary.encode("latin-1") + b"--" if isinstance(boundary, str) and boundary else b""


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit integer grey (PNG ``I;16`` / ``I``) -> 8-bit ``L``, x / 257 rounded (65535 -> 255).
    Pillow's own ``convert`` clips at 255 instead, which turns almost every pixel white."""
    if im.mode == "I" or im.mode.startswith("I;16"):
        return Image.fromarray((np.asarray(im).astype(np.float64) / 257.0).round().clip(0, 255).astype(np.uint8))
    return im


def image_to_rgb(im: Image.Image) -> np.ndarray:
    """Photo -> uint8 (H, W, 3); alpha is dropped, grey is expanded, 16-bit grey is scaled to 8 bits,
    CMYK is rendered to sRGB through its ICC profile when it has one (:func:`ctsdg.images.cmyk_to_rgb`)."""
    if im.mode == "CMYK":
        return cmyk_to_rgb(im)
    return np.asarray(_to_8bit(im).convert("RGB"), dtype=np.uint8)


def image_to_binary(im: Image.Image) -> np.ndarray:
    """Mask or edge-stroke image -> uint8 (H, W) with 255 where white (> 127), else 0.

    Uses :func:`ctsdg.conventions.hole_mask_from_uint8`, so an RGBA brush layer with black colour and
    opaque strokes counts as white where the alpha is.
    """
    im = _to_8bit(im)
    has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    if has_alpha:
        array = np.asarray(im.convert("RGBA"), dtype=np.uint8)
    elif im.mode in ("1", "L", "F"):
        array = np.asarray(im.convert("L"), dtype=np.uint8)
    else:
        array = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return hole_mask_to_uint8(hole_mask_from_uint8(array))


def check_inputs(image: np.ndarray, mask: np.ndarray, edges: np.ndarray | None) -> None:
    """Sizes agree and the mask has something to fill and something to keep (422 otherwise)."""
    height, width = image.shape[:2]
    for name, array in (("mask", mask), ("edges", edges)):
        if array is not None and array.shape != (height, width):
            turned = (f"; the server turns photos upright by their EXIF orientation, so draw the {name} on the "
                      "picture as a photo viewer shows it" if array.shape == (width, height) else "")
            raise ApiError(422, "size_mismatch",
                           f"{name} is {array.shape[1]}x{array.shape[0]} but image is {width}x{height}; "
                           f"export the {name} at the image's size (resize it with nearest-neighbour){turned}")
    holes = int(np.count_nonzero(mask))
    if holes == 0:
        raise ApiError(422, "empty_mask", "the mask has no white pixels; paint the region to fill in white "
                       "(255) on black")
    if holes == mask.size:
        raise ApiError(422, "full_mask", "the mask is white everywhere; leave the pixels to keep black so "
                       "the model has something to fill from")


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def public_description(value: Any) -> Any:
    """``describe()`` without server paths: absolute paths, and relative ones that exist here, are reduced
    to their file name."""
    if isinstance(value, dict):
        return {str(k): public_description(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [public_description(v) for v in value]
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str) and (os.path.isabs(value) or value.startswith("~")
                                   or (os.sep in value and os.path.exists(value))):
        return os.path.basename(value)
    return value


# ----------------------------------------------------------------------------------------------------------
# ASGI guard: body cap before parsing, security headers on every response.


class _BodyTooLarge(Exception):
    pass


class RequestGuard:
    """Pure ASGI middleware: refuses bodies over ``max_request_bytes`` (by Content-Length up front, or by
    counting a streamed body) with 413, and adds security headers. The page's Content-Security-Policy
    allows only this origin (no CDN, no inline script); the Swagger page keeps FastAPI's inline start-up
    script, so it gets the other headers only."""

    PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
                "connect-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")

    def __init__(self, app: Any, max_request_bytes: int):
        self.app = app
        self.max_request_bytes = max_request_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = error_response(
            413, "request_too_large",
            f"the request is larger than this server accepts ({self.max_request_bytes / 2**20:g} MiB); "
            "downscale the image or start the server with a larger --max-upload-mb")
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await error_response(400, "bad_request", "invalid Content-Length header")(scope, receive, send)
                return
            if declared > self.max_request_bytes:
                await too_large(scope, receive, send)
                return

        received = 0
        started = False

        async def counted_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_request_bytes:
                    raise _BodyTooLarge
            return message

        docs = scope.get("path", "").startswith("/docs")

        async def send_with_headers(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                         (b"x-frame-options", b"DENY")]
                if not docs:
                    extra.append((b"content-security-policy", self.PAGE_CSP.encode()))
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        try:
            await self.app(scope, counted_receive, send_with_headers)
        except _BodyTooLarge:
            if not started:
                await too_large(scope, receive, send_with_headers)


# ----------------------------------------------------------------------------------------------------------
# The app.

_INPAINT_REQUEST_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object",
        "required": ["image", "mask"],
        "properties": {
            "image": {"type": "string", "format": "binary",
                      "description": "PNG, JPEG or WebP photo (EXIF orientation applied, alpha dropped)"},
            "mask": {"type": "string", "format": "binary",
                     "description": "same size as image; white (> 127) = region to fill, black = keep"},
            "edges": {"type": "string", "format": "binary",
                      "description": "optional, same size; white = a structure line to steer the fill"},
            "strategy": {"type": "string",
                         "description": "optional inference strategy name (the model's default if absent)"},
            "blend": {"type": "string", "enum": ["poisson", "none"],
                      "description": "optional: poisson = the fill takes its level from the pixels around the "
                                     "hole (no seam); none = the raw output pasted in (the server's default "
                                     "if absent)"},
        },
    }}},
}

_ERROR_SCHEMA = {"application/json": {"schema": {
    "type": "object", "required": ["error", "message"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
}}}

_INPAINT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the inpainted image, PNG, same size as `image`; known pixels unchanged",
          "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
    400: {"description": "malformed multipart body", "content": _ERROR_SCHEMA},
    408: {"description": "the upload arrived slower than the server's upload timeout", "content": _ERROR_SCHEMA},
    413: {"description": "request body or image pixels over the server's limits", "content": _ERROR_SCHEMA},
    415: {"description": "a file is not a PNG, JPEG or WebP image", "content": _ERROR_SCHEMA},
    422: {"description": "missing field, corrupt file, size mismatch, empty or full mask",
          "content": _ERROR_SCHEMA},
    429: {"description": "one inference runs and the queue is full; retry after `Retry-After` s",
          "content": _ERROR_SCHEMA},
    500: {"description": "the model failed; details are in the server log only", "content": _ERROR_SCHEMA},
    504: {"description": "queue wait + inference took longer than the server's timeout",
          "content": _ERROR_SCHEMA},
}


def create_app(
    inpainter: InpainterLike | None = None,
    *,
    inpainter_factory: Callable[[], InpainterLike] | None = None,
    checkpoint: str | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    blend: str = "poisson",
    adapt: int | AdaptConfig = 0,
    limits: ServeLimits | None = None,
) -> FastAPI:
    """Build the app. Give at most one of ``inpainter``, ``inpainter_factory`` or ``checkpoint``.

    Args:
        inpainter: a ready model (anything :class:`InpainterLike`).
        inpainter_factory: called once, now, to build the model.
        checkpoint: path or bundled name for ``Inpainter.from_pretrained`` (None = the bundled model when
            no inpainter is given).
        device: torch device for ``from_pretrained``.
        precision: ``"fp32"``, ... for ``from_pretrained``.
        blend: ``"poisson"`` or ``"none"``, for ``from_pretrained``.
        adapt: steps of test-time adaptation before each fill, or an ``AdaptConfig`` (``ctsdg/adapt.py``), for
            ``from_pretrained``.
        limits: :class:`ServeLimits`; defaults when None.

    Returns:
        The FastAPI app (serve it with uvicorn; ``ctsdg serve`` does).
    """
    given = [name for name, v in (("inpainter", inpainter), ("inpainter_factory", inpainter_factory),
                                  ("checkpoint", checkpoint)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"create_app takes one of inpainter, inpainter_factory or checkpoint, got {given}")
    if inpainter is None:
        if inpainter_factory is not None:
            inpainter = inpainter_factory()
        else:
            from .inference import Inpainter

            inpainter = Inpainter.from_pretrained(checkpoint, device=device, precision=precision, blend=blend,
                                                  adapt=adapt)
    if not callable(inpainter) or not callable(getattr(inpainter, "describe", None)):
        raise TypeError(f"{type(inpainter).__name__} is not an inpainter: it needs __call__(image, mask, *, "
                        "extra_edges=None, strategy=None) and describe()")
    limits = limits or ServeLimits()
    description = public_description(dict(inpainter.describe()))
    gate = InferenceGate(limits.queue_size)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        gate.shutdown()

    app = FastAPI(
        title="ctsdg inpainting",
        version="1",
        summary="CTSDG image inpainting (ICCV 2021). Masks: white (255) = fill, black = keep.",
        docs_url=None, redoc_url=None, openapi_url="/openapi.json", lifespan=lifespan,
    )
    # The Swagger UI that ships offline (swagger-ui-bundle, 4.x) renders OpenAPI 3.0 documents only; this
    # schema uses nothing of 3.1.
    app.openapi_version = "3.0.3"
    app.state.inpainter, app.state.gate, app.state.limits = inpainter, gate, limits
    app.add_middleware(RequestGuard, max_request_bytes=limits.max_request_bytes)

    # -- errors: JSON with a message, never internals ------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}  # everything else is ours
        messages = {404: "no such page; the API is under /api/v1 (see /docs)",
                    405: "method not allowed here; see /docs for the API"}
        message = messages.get(exc.status_code) or (str(exc.detail) if exc.status_code == 400 else "error")
        return error_response(exc.status_code, codes.get(exc.status_code, "error"), message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        where = ", ".join(".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()[:3])
        return error_response(422, "invalid_request", f"invalid request ({where}); see /docs for the API")

    @app.exception_handler(Exception)
    async def _internal_error(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal", "the server failed; its log has the details")

    # -- API -----------------------------------------------------------------------------------------
    @app.get(f"{API}/health", summary="Liveness and queue state")
    async def health() -> dict[str, Any]:
        """`{"status": "ok", "running": 0|1, "queued": n, "queue_size": n}`"""
        return {"status": "ok", **gate.stats()}

    @app.get(f"{API}/model", summary="The model behind the API")
    async def model() -> dict[str, Any]:
        """The inpainter's `describe()` (architecture, checkpoint sha256, mask convention, parameters)
        with server paths reduced to file names, plus this server's `limits`."""
        return {**description, "limits": dataclasses.asdict(limits)}

    @app.post(f"{API}/inpaint", summary="Inpaint the white region of the mask", response_class=Response,
              openapi_extra={"requestBody": _INPAINT_REQUEST_BODY}, responses=_INPAINT_RESPONSES)
    async def inpaint(request: Request) -> Response:
        """Multipart `image` + `mask` (+ `edges`, `strategy`) -> PNG of the image's size. The mask's
        white pixels are filled; every other pixel is returned unchanged. Optional `edges` strokes (white)
        are added to the structure stream's edge map to steer the fill."""
        started = time.monotonic()
        closing = multipart_closing_delimiter(request.headers.get("content-type", ""))
        tail = b""

        async def receive_keeping_the_tail() -> dict:
            nonlocal tail
            message = await request.receive()
            if message["type"] == "http.request":
                tail = (tail + message.get("body", b""))[-(len(closing) + 64):]
            return message

        try:
            form = await asyncio.wait_for(
                Request(request.scope, receive_keeping_the_tail).form(
                    max_files=len(UPLOAD_FIELDS), max_fields=len(TEXT_FIELDS) + 1, max_part_size=1024),
                timeout=limits.upload_timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            raise ApiError(408, "upload_timeout", f"the upload did not arrive within {limits.upload_timeout_s:g} s; "
                           "check the connection or start the server with a larger --upload-timeout") from None
        except ClientDisconnect:
            log.info("a client closed its connection during the upload")
            raise ApiError(400, "bad_request", "the connection closed before the upload was complete") from None
        if closing and closing not in tail:
            await form.close()
            raise ApiError(400, "bad_request", "the multipart body is cut off (its closing boundary never came); "
                           "send the whole upload again")
        try:
            uploads: dict[str, tuple[bytes, str | None]] = {}
            for key, value in form.multi_items():
                if key in uploads or (key not in UPLOAD_FIELDS and key not in TEXT_FIELDS):
                    raise ApiError(422, "invalid_request",
                                   f"unexpected or repeated form field '{key[:40]}'; send image, mask and "
                                   "optionally edges, strategy and blend, once each")
                if key in UPLOAD_FIELDS:
                    if not isinstance(value, UploadFile):
                        raise ApiError(422, "invalid_request", f"'{key}' must be a file upload")
                    uploads[key] = (await value.read(), value.content_type)
            for key in ("image", "mask"):
                if key not in uploads:
                    raise ApiError(422, "missing_field",
                                   f"missing form field '{key}'; send multipart/form-data with an image and "
                                   "a mask file (white = fill)")
            strategy = form.get("strategy")
            if strategy is not None and not isinstance(strategy, str):
                raise ApiError(422, "invalid_request", "'strategy' must be a text field")
            strategy = (strategy or "").strip() or None
            if strategy is not None and (len(strategy) > 32 or not strategy.replace("-", "").replace("_", "")
                                         .isalnum()):
                raise ApiError(422, "invalid_strategy", "'strategy' must be a short name such as the ones "
                               "listed in /docs")
            blend = form.get("blend")
            if blend is not None and not isinstance(blend, str):
                raise ApiError(422, "invalid_request", "'blend' must be a text field")
            blend = (blend or "").strip() or None
            if blend is not None and blend not in BLENDS:
                raise ApiError(422, "invalid_blend", f"'blend' must be one of {', '.join(BLENDS)} (or absent: "
                               "the server's default)")
        finally:
            await form.close()

        def decode(uploads: dict[str, tuple[bytes, str | None]]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
            image = image_to_rgb(open_checked(uploads["image"][0], "image", uploads["image"][1], limits))
            mask = image_to_binary(open_checked(uploads["mask"][0], "mask", uploads["mask"][1], limits))
            edges = None
            if "edges" in uploads:
                data, declared = uploads["edges"]
                edges = image_to_binary(open_checked(data, "edges", declared, limits))
            check_inputs(image, mask, edges)
            if edges is not None and not edges.any():
                edges = None
            return image, mask, edges

        from starlette.concurrency import run_in_threadpool

        def work(image: np.ndarray, mask: np.ndarray, edges: np.ndarray | None) -> bytes:
            options = {} if blend is None else {"blend": blend}
            result = inpainter(image, mask, extra_edges=edges, strategy=strategy, **options)
            if not (isinstance(result, np.ndarray) and result.dtype == np.uint8 and result.shape == image.shape):
                raise RuntimeError(f"inpainter returned {type(result).__name__} "
                                   f"{getattr(result, 'shape', '')} {getattr(result, 'dtype', '')}, "
                                   f"expected uint8 {image.shape}")
            return encode_png(result)

        if not gate.admit():
            stats = gate.stats()
            raise ApiError(429, "busy", f"the model is busy ({stats['running']} running, {stats['queued']} "
                           "waiting); retry in a few seconds", headers={"Retry-After": "2"})
        handed_over = False
        try:
            image, mask, edges = await run_in_threadpool(decode, uploads)
            del uploads  # the raw bytes are not needed while the request waits in the queue
            future = gate.run(functools.partial(work, image, mask, edges))
            handed_over = True
        finally:
            if not handed_over:
                gate.release()
        remaining = limits.timeout_s - (time.monotonic() - started)
        try:
            png = await asyncio.wait_for(asyncio.wrap_future(future), timeout=max(remaining, 0.001))
        except (asyncio.TimeoutError, TimeoutError):
            future.cancel()  # frees the slot if it had not started; a running job keeps it until it ends
            raise ApiError(504, "timeout", f"inpainting did not finish within {limits.timeout_s:g} s; use a "
                           "smaller image or mask, or start the server with a larger --timeout") from None
        except (ValueError, TypeError) as exc:  # the inpainter's boundary errors are written for users
            raise ApiError(422, "invalid_input", str(exc).splitlines()[0][:300] if str(exc) else
                           "the model refused this input") from None
        except Exception as exc:
            log.error("inpainting failed", exc_info=exc)
            raise ApiError(500, "inference_failed", "inpainting failed on the server; its log has the "
                           "details") from None
        elapsed = time.monotonic() - started
        return Response(png, media_type="image/png",
                        headers={"Cache-Control": "no-store", "X-Elapsed-Seconds": f"{elapsed:.3f}"})

    # -- OpenAPI page, served locally --------------------------------------------------------------
    swagger_dir = _swagger_ui_dir()
    if swagger_dir is not None:
        app.mount("/docs-assets", StaticFiles(directory=swagger_dir), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        if swagger_dir is None:
            return HTMLResponse("<!doctype html><title>ctsdg API</title><p>The interactive API page needs "
                                "<code>pip install 'ctsdg[serve]'</code> (swagger-ui-bundle). The schema is at "
                                "<a href='/openapi.json'>/openapi.json</a>.</p>")
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(openapi_url="/openapi.json", title="ctsdg API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/static/favicon.svg")

    # -- the page ------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                            headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _swagger_ui_dir() -> str | None:
    try:
        import swagger_ui_bundle
    except ImportError:
        return None
    path = getattr(swagger_ui_bundle, "swagger_ui_path", None)
    return path if path and os.path.isfile(os.path.join(path, "swagger-ui-bundle.js")) else None
