import socket
import threading
import time

import pytest
import torch


@pytest.fixture
def threads(request):
    """torch's intra-op threads for one test (restored after it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def refuse_writes_in(monkeypatch):
    """``refuse_writes_in(folder)``: creating a file in ``folder`` fails with EACCES from then on, as in a
    folder we may not write to. Tests may run as root, which ignores permission bits; every write of ctsdg
    (files.atomic_path) and its write check (files.check_writable_folder) create a file with
    ``tempfile.mkstemp`` first."""
    import os
    import tempfile

    real = tempfile.mkstemp
    refused: set[str] = set()

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and os.path.abspath(dir) in refused:
            raise PermissionError(13, "Permission denied", os.path.join(dir, ".x.tmp"))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    return lambda folder: refused.add(os.path.abspath(folder))


@pytest.fixture(scope="session")
def cmyk_gray_icc() -> bytes:
    """A minimal ICC v2 CMYK printer profile, built here (no CMYK profile ships in a registry package):
    every colour prints through black ink alone, L* = 100 (1 - K). So it renders pure cyan as white and
    separates any sRGB colour into K only, which tells its use apart from Pillow's formulas."""
    import struct

    def s15(x: float) -> bytes:
        return struct.pack(">i", round(x * 65536))

    def lut16(n_in: int, n_out: int, clut: list[int]) -> bytes:  # 2 grid points, identity curves
        body = b"mft2" + bytes(4) + bytes([n_in, n_out, 2, 0]) + b"".join(s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
        body += struct.pack(">HH", 2, 2) + struct.pack(">HH", 0, 65535) * n_in
        return body + b"".join(struct.pack(">H", v) for v in clut) + struct.pack(">HH", 0, 65535) * n_out

    corners = (0, 1)
    to_lab = [v for _c in corners for _m in corners for _y in corners for k in corners
              for v in ((1 - k) * 0xFF00, 0x8000, 0x8000)]  # 16-bit Lab: L* 100 = 0xFF00, a* = b* = 0 at 0x8000
    to_cmyk = [v for lum in corners for _a in corners for _b in corners for v in (0, 0, 0, (1 - lum) * 65535)]
    white = s15(0.9642) + s15(1.0) + s15(0.8249)  # D50
    name = b"ctsdg test CMYK\0"
    tags = {
        b"desc": b"desc" + bytes(4) + struct.pack(">I", len(name)) + name + bytes(8 + 3 + 67),
        b"wtpt": b"XYZ " + bytes(4) + white,
        b"cprt": b"text" + bytes(4) + b"public domain\0",
        b"A2B0": lut16(4, 3, to_lab),
        b"B2A0": lut16(3, 4, to_cmyk),
    }
    offset = 128 + 4 + 12 * len(tags)
    table, data = struct.pack(">I", len(tags)), b""
    for sig, body in tags.items():
        body += bytes(-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    header = struct.pack(">I", offset + len(data)) + bytes(4) + struct.pack(">I", 0x02100000) + b"prtrCMYKLab "
    header += bytes(12) + b"acsp" + bytes(28) + white
    return header + bytes(128 - len(header)) + table + data


class ServerThread:
    """uvicorn serving ``app`` on a free loopback port in a daemon thread (TestClient sends a body at once;
    a real server is what a browser, a trickled upload or a closed connection needs)."""

    def __init__(self, app):
        uvicorn = pytest.importorskip("uvicorn")

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture
def server_thread():
    """``with server_thread(app) as server``: ``server.port``, ``server.url``."""
    return ServerThread
