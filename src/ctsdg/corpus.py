"""A small real-photo corpus gathered from registry packages (no hub, no URL).

No CelebA-, Paris- or Places2-like data set ships in any package registry, but real photos do
(see ``/work/shared/ASSETS.md``): Debian wallpaper packages for training and the scikit-image /
scikit-learn sample photos for validation. :func:`gather_photos` copies them byte for byte into

    out_dir/
      train/<package>__<name>.<ext>     Debian wallpapers (split by photo, never by crop)
      val/<package>__<name>.<ext>       scikit-image and scikit-learn photos
      manifest.json, manifest.csv       one row per photo: split, source package and version,
                                        original file, sha256, licence, width, height, bytes

Debian packages are fetched with ``apt-get download`` (or taken from ``debs_dir``) and unpacked in
Python into a temporary folder (the same files as ``dpkg -x``; nothing is installed system-wide);
licences come from each package's DEP-5 copyright file.
The scikit-learn photos come from the installed package, or from its wheel (``pip download
--no-deps``) when it is not installed. Illustrations and gradients inside those packages are left out
on purpose (listed in ``EXCLUDED`` with the reason).
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from .files import write_bytes_atomic

MANIFEST_FIELDS = (
    "file",
    "split",
    "source_package",
    "package_version",
    "original_file",
    "sha256",
    "licence",
    "width",
    "height",
    "bytes",
)


@dataclass(frozen=True)
class PhotoRecord:
    """One row of the corpus manifest. ``file`` is relative to the corpus folder."""

    file: str
    split: str
    source_package: str
    package_version: str
    original_file: str
    sha256: str
    licence: str
    width: int
    height: int
    bytes: int


# --- what is gathered ---------------------------------------------------------------------------

DEBIAN_PACKAGES: tuple[str, ...] = (
    "lomiri-wallpapers-16.04",
    "lomiri-wallpapers-20.04",
    "mate-backgrounds",
    "plasma-workspace-wallpapers",
)

# Photos of KDE Plasma (each wallpaper folder holds one photo at several sizes; we keep the largest).
PLASMA_PHOTOS: tuple[str, ...] = (
    "BytheWater",
    "ColdRipple",
    "DarkestHour",
    "EveningGlow",
    "FallenLeaf",
    "Grey",
    "Kite",
    "OneStandsOut",
    "Path",
    "Volna",
    "summer_1am",
)

# Files inside the gathered folders that are not photographs.
EXCLUDED: dict[str, str] = {
    "umang_by_Abhishek_Mudgal.jpg": "smooth digital gradient, not a photo",
    "Fossa_by_Jasper_Roks.jpg": "illustration (Ubuntu mascot)",
    "Painting-Colors_by__herobrine7gamer.jpg": "digital painting",
    "Blinds.jpg": "rendered stripes, not a photo",
}

# scikit-image colour photos and their licences (from the docstrings of ``skimage.data``).
SKIMAGE_PHOTOS: dict[str, str] = {
    "astronaut.png": "public domain (NASA)",
    "chelsea.png": "CC0-1.0 (Stefan van der Walt)",
    "coffee.png": "CC0-1.0 (Rachel Michetti)",
    "hubble_deep_field.jpg": "public domain (NASA)",
    "ihc.png": "BSD-3-Clause (scikit-image sample data)",
    "motorcycle_left.png": "BSD-3-Clause (scikit-image sample data; Middlebury stereo 2014)",
    "retina.jpg": "CC0-1.0 (Mikael Haggstrom, Wikimedia Commons)",
    "rocket.jpg": "public domain (SpaceX)",
}

# scikit-learn sample photos and their licences (from sklearn/datasets/images/README.txt).
SKLEARN_PHOTOS: dict[str, str] = {
    "china.jpg": "CC-BY-2.0 (danielbuechele, Flickr)",
    "flower.jpg": "CC-BY-2.0 (vultilion, Flickr)",
}


# --- Debian copyright files ---------------------------------------------------------------------


def parse_dep5_licences(text: str) -> list[tuple[list[str], str]]:
    """Parse a machine-readable Debian copyright file into ``[(file_patterns, licence), ...]``.

    Only ``Files:`` stanzas are returned, in file order (DEP-5: the last matching stanza wins).
    Continuation lines of a ``Files:`` field (indented) add more patterns.
    """
    stanzas: list[tuple[list[str], str]] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        patterns: list[str] = []
        licence = ""
        field = ""
        for line in block.split("\n"):
            if not line.strip():
                continue
            if line[0] in " \t":
                if field == "files":
                    patterns.extend(line.split())
                continue
            key, _, value = line.partition(":")
            field = key.strip().lower()
            if field == "files":
                patterns.extend(value.split())
            elif field == "license" and not licence:
                licence = value.strip()
        if patterns and licence:
            stanzas.append((patterns, licence))
    return stanzas


def licence_for(original_file: str, stanzas: list[tuple[list[str], str]], default: str) -> str:
    """The licence of an installed file (``/usr/share/.../x.jpg``) under DEP-5 ``stanzas``.

    Debian copyright files name upstream paths (``16.04/x.jpg``) that differ from installed paths,
    so a pattern matches when its last component matches the file name; a wildcard last component
    (``debian/*``, ``nature/*``) additionally needs its folder name among the installed path's
    folders, and ``debian/`` patterns (packaging files) never match. ``*`` matches everything.
    """
    parts = original_file.strip("/").split("/")
    name, folders = parts[-1], parts[:-1]
    found = default
    for patterns, licence in stanzas:
        for pattern in patterns:
            folder, _, base = pattern.rpartition("/")
            if pattern == "*":
                matched = True
            elif folder.split("/")[0] == "debian" or not fnmatch.fnmatch(name, base):
                matched = False
            elif folder and any(ch in base for ch in "*?["):
                matched = folder.rsplit("/", 1)[-1] in folders
            else:
                matched = True
            if matched:
                found = licence
    return found


# --- selection inside an unpacked package -------------------------------------------------------


def select_debian_photos(package: str, root: Path) -> list[tuple[Path, str]]:
    """Photos inside an unpacked Debian package ``root`` -> ``[(path, output_name), ...]``, sorted."""
    chosen: list[tuple[Path, str]] = []
    if package.startswith("lomiri-wallpapers"):
        for path in sorted((root / "usr/share/backgrounds").glob("*.jpg")):
            chosen.append((path, path.name))
    elif package == "mate-backgrounds":
        for path in sorted((root / "usr/share/backgrounds/mate/nature").glob("*.jpg")):
            chosen.append((path, path.name))
    elif package == "plasma-workspace-wallpapers":
        for name in PLASMA_PHOTOS:
            folder = root / "usr/share/wallpapers" / name / "contents/images"
            candidates = sorted(folder.glob("*.jpg")) + sorted(folder.glob("*.png"))
            if not candidates:
                continue
            # File names do not always match the pixel size, so measure.
            largest = max(candidates, key=lambda p: _pixel_count(p))
            chosen.append((largest, f"{name}{largest.suffix}"))
    else:
        raise ValueError(f"unknown photo package {package!r}; expected one of {DEBIAN_PACKAGES}")
    return [(p, n) for p, n in chosen if p.name not in EXCLUDED and n not in EXCLUDED]


def _pixel_count(path: Path) -> int:
    with Image.open(path) as im:
        return im.size[0] * im.size[1]


# --- gathering ----------------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _record(
    out_dir: Path, split: str, package: str, version: str, original: str, name: str, data: bytes, licence: str
) -> PhotoRecord:
    with Image.open(io.BytesIO(data)) as im:
        width, height = im.size
    rel = f"{split}/{package}__{name}"
    write_bytes_atomic(out_dir / rel, data)
    return PhotoRecord(
        rel, split, package, version, original, _sha256(data), licence, width, height, len(data)
    )


def _download_deb(package: str, work: Path, debs_dir: Path | None) -> Path:
    if debs_dir is not None:
        found = sorted(Path(debs_dir).glob(f"{package}_*.deb"))
        if found:
            return found[-1]
    proc = subprocess.run(["apt-get", "download", package], cwd=work, capture_output=True, text=True)
    found = sorted(work.glob(f"{package}_*.deb"))
    if not found:
        raise RuntimeError(
            f"could not download the Debian package {package!r} ({proc.stderr.strip()[-300:]}); "
            "run `apt-get update` first, or pass --debs-dir with the .deb files already downloaded"
        )
    return found[-1]


def gather_debian(package: str, out_dir: Path, work: Path, debs_dir: Path | None = None) -> list[PhotoRecord]:
    """Download (or reuse) one Debian package, unpack it in ``work`` and copy its photos to ``train/``."""
    deb = _download_deb(package, work, debs_dir)
    version = deb.name.split("_")[1].replace("%3a", ":")
    root = work / package
    extract_deb(deb, root)
    return collect_debian_root(package, version, root, out_dir)


def extract_deb(deb: Path, dest: Path) -> None:
    """Unpack the files of a ``.deb`` into ``dest`` (like ``dpkg -x``), without installing anything.

    A .deb is an ``ar`` archive holding ``data.tar.{xz,gz,bz2}``; it is read here in Python so the
    recipe also works where dpkg is missing (``--debs-dir`` with downloaded files on any system).
    """
    import tarfile

    data = Path(deb).read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise ValueError(f"{deb} is not a Debian package (no ar header); download it again")
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        body = data[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)
        if name.startswith("data.tar"):
            dest.mkdir(parents=True, exist_ok=True)
            try:
                with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
                    try:
                        tar.extractall(dest, filter="data")
                    except TypeError:  # Python without extraction filters: check the names ourselves
                        members = [
                            m
                            for m in tar.getmembers()
                            if (m.isfile() or m.isdir())
                            and not Path(m.name).is_absolute()
                            and ".." not in Path(m.name).parts
                        ]
                        tar.extractall(dest, members=members)
            except tarfile.TarError as exc:
                raise ValueError(
                    f"cannot unpack {name} of {deb} ({exc}); is it zstd-compressed? "
                    "install dpkg and unpack with `dpkg -x`"
                ) from exc
            return
    raise ValueError(f"{deb} holds no data.tar member; download it again")


def collect_debian_root(package: str, version: str, root: Path, out_dir: Path) -> list[PhotoRecord]:
    """Copy the photos of an already unpacked Debian package ``root`` into ``out_dir/train``."""
    copyright_file = root / "usr/share/doc" / package / "copyright"
    stanzas = (
        parse_dep5_licences(copyright_file.read_text(errors="replace")) if copyright_file.is_file() else []
    )
    records = []
    for path, name in select_debian_photos(package, root):
        data = path.read_bytes()
        original = "/" + str(path.relative_to(root))
        licence = licence_for(original, stanzas, default="see Debian copyright file")
        records.append(_record(out_dir, "train", package, version, original, name, data, licence))
    return records


def _module_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name.split(".")[0])
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def gather_python_photos(out_dir: Path, work: Path) -> list[PhotoRecord]:
    """Copy the scikit-image and scikit-learn sample photos into ``out_dir/val``."""
    records = []
    skimage_dir = _module_dir("skimage")
    if skimage_dir is None:
        raise RuntimeError("scikit-image is not installed; run `pip install scikit-image`")
    for name, licence in SKIMAGE_PHOTOS.items():
        path = skimage_dir / "data" / name
        records.append(
            _record(
                out_dir,
                "val",
                "scikit-image",
                _dist_version("scikit-image"),
                f"skimage/data/{name}",
                name,
                path.read_bytes(),
                licence,
            )
        )

    sklearn_dir = _module_dir("sklearn")
    if sklearn_dir is not None:
        version = _dist_version("scikit-learn")
        files = {n: (sklearn_dir / "datasets/images" / n).read_bytes() for n in SKLEARN_PHOTOS}
    else:  # read the photos straight out of the wheel, without installing it
        wheel_dir = work / "wheel"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "-d",
                str(wheel_dir),
                "scikit-learn",
            ],
            capture_output=True,
            text=True,
        )
        wheels = sorted(wheel_dir.glob("scikit_learn-*.whl"))
        if not wheels:
            raise RuntimeError(
                f"scikit-learn is not installed and its wheel could not be downloaded ({proc.stderr.strip()[-300:]}); "
                "run `pip install scikit-learn`"
            )
        version = wheels[-1].name.split("-")[1]
        with zipfile.ZipFile(wheels[-1]) as zf:
            files = {n: zf.read(f"sklearn/datasets/images/{n}") for n in SKLEARN_PHOTOS}
    for name, licence in SKLEARN_PHOTOS.items():
        records.append(
            _record(
                out_dir,
                "val",
                "scikit-learn",
                version,
                f"sklearn/datasets/images/{name}",
                name,
                files[name],
                licence,
            )
        )
    return records


def write_manifest(out_dir: Path, records: list[PhotoRecord]) -> None:
    """Write ``manifest.json`` and ``manifest.csv`` (atomically) for ``records``."""
    rows = [asdict(r) for r in sorted(records, key=lambda r: r.file)]
    payload = {
        "about": "real photos gathered by `ctsdg data photos` from registry packages; see docs/data.md",
        "count": len(rows),
        "splits": {s: sum(r["split"] == s for r in rows) for s in ("train", "val")},
        "photos": rows,
    }
    write_bytes_atomic(out_dir / "manifest.json", (json.dumps(payload, indent=2) + "\n").encode())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(out_dir / "manifest.csv", buf.getvalue().encode())


def read_manifest(corpus_dir: str | os.PathLike, verify: bool = False) -> list[PhotoRecord]:
    """Read ``manifest.json`` of a corpus; with ``verify`` also check every file's sha256."""
    corpus_dir = Path(corpus_dir)
    path = corpus_dir / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; create the corpus with `ctsdg data photos --out {corpus_dir}`"
        )
    records = [PhotoRecord(**row) for row in json.loads(path.read_text())["photos"]]
    if verify:
        for r in records:
            file = corpus_dir / r.file
            if not file.is_file():
                raise FileNotFoundError(f"{file} is listed in {path} but missing; re-run `ctsdg data photos`")
            if _sha256(file.read_bytes()) != r.sha256:
                raise ValueError(f"{file} does not match its sha256 in {path}; re-run `ctsdg data photos`")
    return records


SPLITS = ("train", "val")


def _previous_corpus(out: Path, gathered: set[str]) -> tuple[set[str], list[PhotoRecord]]:
    """What the manifest of a previous corpus in ``out`` lists: its files (relative paths; only ``<split>/<name>``
    paths, so that a damaged or hand-made manifest can never make a re-run delete anything else), and the records
    of those in the splits not in ``gathered`` whose files are still there (a re-run keeps them)."""
    path = out / "manifest.json"
    try:
        rows = json.loads(path.read_text())["photos"]
        listed = {str(row["file"]) for row in rows}
        files = {f for f in listed if len(Path(f).parts) == 2 and Path(f).parts[0] in SPLITS and ".." not in f}
        kept = [PhotoRecord(**row) for row in rows if str(row["file"]) in files
                and Path(row["file"]).parts[0] not in gathered and (out / row["file"]).is_file()]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a readable corpus manifest ({exc}); move the folder's contents "
                         "elsewhere, or choose an empty --out") from exc
    return files, kept


def unlisted_files(out_dir: str | os.PathLike, records: list[PhotoRecord]) -> list[Path]:
    """Files in the corpus's split folders that ``records`` does not list (put there by hand), sorted."""
    out, listed = Path(out_dir), {r.file for r in records}
    return sorted(
        p for split in SPLITS if (out / split).is_dir() for p in (out / split).rglob("*")
        if p.is_file() and p.relative_to(out).as_posix() not in listed
    )


def _check_prerequisites(packages: tuple[str, ...], debs_dir: Path | None, python_photos: bool) -> None:
    """Everything gathering needs from the system, checked before anything is written."""
    if packages and shutil.which("apt-get") is None:
        if debs_dir is None:
            raise RuntimeError("apt-get is not available; pass --debs-dir with the .deb files, or --no-debian")
        missing = [p for p in packages if not any(debs_dir.glob(f"{p}_*.deb"))]
        if missing:
            raise RuntimeError(f"{debs_dir} holds no {missing[0]}_*.deb and apt-get is not available to "
                               "download it; put the .deb files there, or pass --no-debian")
    if python_photos and _module_dir("skimage") is None:
        raise RuntimeError("scikit-image is not installed; run `pip install scikit-image`, or pass "
                           "--no-python-photos")


def gather_photos(
    out_dir: str | os.PathLike,
    debs_dir: str | os.PathLike | None = None,
    packages: tuple[str, ...] = DEBIAN_PACKAGES,
    python_photos: bool = True,
) -> list[PhotoRecord]:
    """Gather the real photos listed in ASSETS.md into ``out_dir`` with a manifest.

    Args:
        out_dir: destination folder; created if missing. It must be empty or a previous corpus
            (it holds a ``manifest.json``). The photos are gathered into a temporary folder inside it
            first; only when all are there do they replace the photos the previous manifest lists in the
            splits gathered this time. A split not gathered this time (``train`` without ``packages``,
            ``val`` without ``python_photos``) keeps its photos and their manifest rows. Files the manifest
            does not list (your own) are never touched (:func:`unlisted_files` names them); a gathered file
            that would replace one is an error.
        debs_dir: optional folder with already downloaded ``<package>_*.deb`` files (offline use).
        packages: the Debian packages to gather (training split).
        python_photos: also gather the scikit-image / scikit-learn photos (validation split).

    Returns:
        The manifest records, sorted by file.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file; pass a folder")
    previous: set[str] = set()
    kept: list[PhotoRecord] = []  # the previous corpus's photos of the splits not gathered this time
    if (out / "manifest.json").is_file():
        gathered = ({"train"} if packages else set()) | ({"val"} if python_photos else set())
        previous, kept = _previous_corpus(out, gathered)
    elif out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty and holds no manifest.json; choose an empty folder")
    debs = Path(debs_dir) if debs_dir else None
    _check_prerequisites(packages, debs, python_photos)
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".ctsdg-photos-", dir=out))  # same file system: renames
    try:
        records: list[PhotoRecord] = []
        with tempfile.TemporaryDirectory(prefix="ctsdg-photos-") as tmp:
            work = Path(tmp)
            for package in packages:
                records += gather_debian(package, staging, work, debs)
            if python_photos:
                records += gather_python_photos(staging, work)
        clash = [r.file for r in records if (out / r.file).exists() and r.file not in previous
                 and _sha256((out / r.file).read_bytes()) != r.sha256]  # the same bytes lose nothing
        if clash:
            raise FileExistsError(f"{out / clash[0]} is not in {out / 'manifest.json'} (your own file?) and a "
                                  "gathered photo has its name; move it elsewhere and run again")
        for r in records:
            (out / r.split).mkdir(exist_ok=True)
            os.replace(staging / r.file, out / r.file)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if made:
            with contextlib.suppress(OSError):
                out.rmdir()  # the folder this call made, if still empty
        raise
    shutil.rmtree(staging, ignore_errors=True)
    records += kept
    # the new manifest first, then the old photos it no longer lists: no moment lists a missing file
    write_manifest(out, records)
    for rel in sorted(previous - {r.file for r in records}):
        (out / rel).unlink(missing_ok=True)
    for split in SPLITS:
        if (out / split).is_dir() and not any((out / split).iterdir()):
            (out / split).rmdir()
    return sorted(records, key=lambda r: r.file)
