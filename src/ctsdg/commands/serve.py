"""``ctsdg serve``: the local web app (paint a mask in the browser) and the REST API, on uvicorn.

Binds 127.0.0.1:7860 by default, so only this machine can connect. Binding any other address prints a
warning: there is no authentication, and anyone who can reach the port can use the model.
"""

from __future__ import annotations

import argparse
import sys

from . import adapt_setting, add_adapt_options


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="start the web app and REST API (http://127.0.0.1:7860)",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind; anything but loopback is "
                        "reachable from other machines (a warning is printed)")
    parser.add_argument("--port", type=int, default=7860, help="TCP port")
    parser.add_argument("--checkpoint", default=None, help="model file (.safetensors, .pt, .onnx); default: "
                        "the model bundled with the package")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                        help="inference precision (fp16 needs CUDA)")
    parser.add_argument("--blend", default="poisson", choices=("poisson", "none"),
                        help="poisson (default): seamless composite; none: paste the raw network output")
    add_adapt_options(parser, "train a copy of the model STEPS steps on each uploaded photo's known pixels "
                              "before filling it (ctsdg inpaint --adapt): better fills, about 0.9 s a step for the "
                              "bundled model at 256² on 2 CPU cores; raise --timeout to match")
    parser.add_argument("--max-upload-mb", type=float, default=64.0,
                        help="largest request body (image + mask + edges), MiB")
    parser.add_argument("--max-megapixels", type=float, default=40.0,
                        help="largest image accepted, in millions of pixels (checked before decoding)")
    parser.add_argument("--queue-size", type=int, default=4,
                        help="requests that may wait behind the running one; more get HTTP 429")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds one request may wait and run before it gets HTTP 504")
    parser.add_argument("--upload-timeout", type=float, default=60.0,
                        help="seconds a client may take to send its upload before it gets HTTP 408")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..serve import ServeLimits, create_app, is_loopback
    except ImportError as exc:
        raise RuntimeError(f"ctsdg serve needs the web extra ({exc.name} is missing); install it with "
                           "pip install 'ctsdg[serve]'") from None

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, got {args.port}")
    for flag, value in (("--max-upload-mb", args.max_upload_mb), ("--max-megapixels", args.max_megapixels),
                        ("--timeout", args.timeout), ("--upload-timeout", args.upload_timeout)):
        if not value > 0:  # also NaN
            raise ValueError(f"{flag} must be a positive number, got {value:g}")
    if args.max_megapixels * 1e6 < 1:
        raise ValueError(f"--max-megapixels {args.max_megapixels:g} allows no pixel at all; the default is 40")
    if args.queue_size < 0:
        raise ValueError(f"--queue-size must be >= 0 (0: only the running request), got {args.queue_size}")
    limits = ServeLimits(
        max_request_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=int(args.max_megapixels * 1e6),
        queue_size=args.queue_size,
        timeout_s=args.timeout,
        upload_timeout_s=args.upload_timeout,
    )
    adapt = adapt_setting(args)
    _check_can_listen(args.host, args.port)  # before minutes of model loading
    if not is_loopback(args.host):
        print(f"warning: binding {args.host}:{args.port} makes the app reachable from other machines; it has "
              "no authentication. Use --host 127.0.0.1 unless you mean it.", file=sys.stderr)
    app = create_app(checkpoint=args.checkpoint, device=args.device, precision=args.precision, blend=args.blend,
                     adapt=adapt, limits=limits)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"ctsdg serve: open http://{host}:{args.port}/  (API docs: /docs; Ctrl+C stops)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_keep_alive=5,
                server_header=False)
    return 0


def _check_can_listen(host: str, port: int) -> None:
    """Fail fast, with what to do, when the address is taken or not ours (uvicorn would only log it)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"--host {host} cannot be resolved ({exc.strerror}); use an address such as 127.0.0.1") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise RuntimeError(f"cannot listen on {host}:{port} ({exc.strerror}); is another server running there? "
                               "Stop it or choose another --port") from None
