"""Load check for ``ctsdg serve``: N concurrent clients hammer ``POST /api/v1/inpaint`` on loopback for a
bounded time.

It starts the app in a child process (uvicorn, a free 127.0.0.1 port) around a real Inpainter: a
random-initialised generator of ``--width`` (default 4, so the numbers show the server and the queue rather
than the network) or a ``--checkpoint``. Or point it at a running server with ``--url`` (loopback only).

Every response must be either a correct PNG (decodes, the photo's size, the known pixels equal to the
input's bit for bit) or a 429 JSON ``{"error": "busy", ...}``; anything else is counted as bad and makes
the exit status 1. Reports requests/s and p50/p95 latency, per status.

    python bench/serve_load.py --clients 8 --duration 20
    python bench/serve_load.py --clients 4 --duration 30 --checkpoint small --size 512 --json out.json
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import sys
import threading
import time
import urllib.parse
import uuid
from collections import Counter

import numpy as np
from PIL import Image


def multipart(fields: dict[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    """Encode file fields as multipart/form-data; returns (body, content type)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, (filename, data, ctype) in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def make_request(size: int) -> tuple[np.ndarray, np.ndarray, bytes, str]:
    """A real photo (scikit-image's astronaut, resized) and a mask with two holes, as a multipart body."""
    from skimage import data

    photo = np.asarray(Image.fromarray(data.astronaut()).resize((size, size), Image.LANCZOS))
    hole = np.zeros((size, size), np.uint8)
    hole[size // 4: size // 4 + size // 6, size // 3: size // 3 + size // 4] = 255
    hole[size // 2: size // 2 + size // 8, size // 2: size // 2 + size // 5] = 255

    def png(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return buf.getvalue()

    body, ctype = multipart({"image": ("photo.png", png(photo), "image/png"),
                             "mask": ("mask.png", png(hole), "image/png")})
    return photo, hole, body, ctype


def check_response(status: int, headers: dict[str, str], payload: bytes, photo: np.ndarray, hole: np.ndarray) -> str:
    """'ok', 'busy' or a short reason why the response is bad."""
    ctype = headers.get("content-type", "")
    if status == 200:
        if ctype != "image/png":
            return f"200 with content-type {ctype}"
        try:
            out = np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))
        except Exception as exc:  # noqa: BLE001 - any decode failure is a bad response
            return f"200 with an undecodable PNG ({type(exc).__name__})"
        if out.shape != photo.shape:
            return f"200 with shape {out.shape}"
        known = hole == 0
        if not np.array_equal(out[known], photo[known]):
            return "200 but known pixels changed"
        return "ok"
    if status == 429:
        try:
            body = json.loads(payload)
        except ValueError:
            return "429 without JSON"
        if body.get("error") != "busy" or not headers.get("retry-after"):
            return f"429 with {body} / Retry-After {headers.get('retry-after')}"
        return "busy"
    return f"status {status}: {payload[:120]!r}"


def client_loop(host: str, port: int, body: bytes, ctype: str, deadline: float, backoff: float | None,
                photo: np.ndarray, hole: np.ndarray, records: list, lock: threading.Lock) -> None:
    conn = http.client.HTTPConnection(host, port, timeout=600)
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/api/v1/inpaint", body=body, headers={"Content-Type": ctype})
            resp = conn.getresponse()
            payload = resp.read()
            status, headers = resp.status, {k.lower(): v for k, v in resp.getheaders()}
        except (OSError, http.client.HTTPException) as exc:
            status, headers, payload = -1, {}, repr(exc).encode()
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=600)
        latency = time.perf_counter() - t0
        verdict = check_response(status, headers, payload, photo, hole)
        with lock:
            records.append((status, latency, verdict, time.monotonic()))
        if verdict == "busy":
            time.sleep(backoff if backoff is not None else float(headers.get("retry-after", 1)))
    conn.close()


def percentile(values: list[float], q: float, digits: int = 3) -> float | None:
    """The q-th percentile rounded, or None (JSON null) when there are no values."""
    return round(float(np.percentile(values, q)), digits) if values else None


def _serve(options: dict, port_queue) -> None:
    """Child process: build the model and the app, bind a free loopback port, report it, serve."""
    import uvicorn

    from ctsdg.serve import ServeLimits, create_app

    if options["checkpoint"]:
        from ctsdg.inference import Inpainter

        checkpoint = None if options["checkpoint"] == "small" else options["checkpoint"]
        inpainter = Inpainter.from_pretrained(checkpoint, device=options["device"])
    else:
        import torch

        from ctsdg import Generator, ModelConfig
        from ctsdg.inference import Inpainter

        torch.manual_seed(0)
        config = ModelConfig(base_width=options["width"])
        inpainter = Inpainter(Generator(config), config, device=options["device"])
    app = create_app(inpainter, limits=ServeLimits(queue_size=options["queue_size"], timeout_s=options["timeout"]))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port_queue.put(sock.getsockname()[1])
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def start_server(args: argparse.Namespace):
    """Run the server in its own process, so that the clients here do not share its interpreter lock."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    port_queue = ctx.Queue()
    options = {k: getattr(args, k) for k in ("checkpoint", "device", "width", "queue_size", "timeout")}
    proc = ctx.Process(target=_serve, args=(options, port_queue), daemon=True)
    proc.start()
    port = port_queue.get(timeout=300)
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/api/v1/health")
            if conn.getresponse().status == 200:
                conn.close()
                break
        except OSError:
            pass
        if time.monotonic() > deadline or not proc.is_alive():
            proc.terminate()
            raise RuntimeError("the server process did not come up")
        time.sleep(0.1)
    return proc, "127.0.0.1", port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load (in-flight requests finish)")
    parser.add_argument("--size", type=int, default=256, help="side of the square test photo")
    parser.add_argument("--width", type=int, default=4, help="base width of the random generator (no --checkpoint)")
    parser.add_argument("--checkpoint", default=None, help="a model file, or 'small' for the bundled model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--queue-size", type=int, default=4, help="server queue (more waiting clients get 429)")
    parser.add_argument("--timeout", type=float, default=300.0, help="server timeout per request, s")
    parser.add_argument("--backoff", type=float, default=None,
                        help="client pause after a 429, s (default: the server's Retry-After, as a polite client)")
    parser.add_argument("--url", default=None, help="use this running server instead (loopback only)")
    parser.add_argument("--json", default=None, help="also write the summary to this JSON file")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.duration <= 0:
        parser.error("--clients must be >= 1 and --duration > 0")

    photo, hole, body, ctype = make_request(args.size)
    proc = None
    if args.url:
        parsed = urllib.parse.urlparse(args.url)
        from ctsdg.serve import is_loopback

        if parsed.scheme != "http" or not parsed.hostname or not is_loopback(parsed.hostname):
            parser.error("--url must be http://127.0.0.1:PORT (loopback only)")
        host, port = parsed.hostname, parsed.port or 80
    else:
        proc, host, port = start_server(args)

    load_before = os.getloadavg()[0]
    records: list = []
    lock = threading.Lock()
    start = time.monotonic()
    deadline = start + args.duration
    threads = [threading.Thread(target=client_loop, args=(host, port, body, ctype, deadline, args.backoff,
                                                          photo, hole, records, lock)) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    if proc is not None:
        proc.terminate()  # uvicorn shuts down on SIGTERM
        proc.join(30)

    verdicts = Counter(v for _, _, v, _ in records)
    ok = [lat for _, lat, v, _ in records if v == "ok"]
    busy = [lat for _, lat, v, _ in records if v == "busy"]
    bad = {v: n for v, n in verdicts.items() if v not in ("ok", "busy")}
    summary = {
        "clients": args.clients, "duration_s": round(elapsed, 2), "photo": f"{args.size}x{args.size}",
        "model": args.checkpoint or f"random generator, base_width {args.width}", "queue_size": args.queue_size,
        "backoff_after_429": "Retry-After" if args.backoff is None else f"{args.backoff} s",
        "cpus": os.cpu_count(), "load_avg_1min_before_after": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "requests": len(records), "png_ok": len(ok), "busy_429": len(busy), "bad": bad,
        "requests_per_s": round(len(records) / elapsed, 2), "png_per_s": round(len(ok) / elapsed, 2),
        "png_latency_p50_s": percentile(ok, 50), "png_latency_p95_s": percentile(ok, 95),
        "busy_latency_p50_s": percentile(busy, 50, 4), "busy_latency_p95_s": percentile(busy, 95, 4),
    }
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        print(f"{key:<{width}}  {value}")
    print("every response a correct PNG or a 429: " + ("yes" if not bad else f"NO ({sum(bad.values())} bad)"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0 if not bad and ok else 1


if __name__ == "__main__":
    sys.exit(main())
