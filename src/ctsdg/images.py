"""Images in and out of ctsdg: pixels plus what must survive the round trip (alpha, ICC profile, EXIF,
mode, 16-bit depth), masks of any polarity-correct format (white = fill), and atomic saving that never
overwrites an input. :class:`ctsdg.Inpainter` (inference.py) and the ``ctsdg inpaint`` command use them.

EXIF orientation is applied on reading (and the tag dropped on writing). 16-bit input is handled as
numpy uint16 and as 16-bit grayscale PIL/PNG (``I;16``); 16-bit RGB PNG files are refused (Pillow would
silently drop them to 8 bits); 16-bit RGB(A) TIFFs, which Pillow would reduce the same way, are read and
written with tifffile in 16 bits. CMYK files (print JPEGs and TIFFs) are filled on an sRGB rendering, through
their embedded ICC profile when they have one, and written back as CMYK: the known pixels keep their
input values exactly, only the fill is separated back into inks. HEIC/HEIF photos are read through the
pillow-heif plugin when it is installed (an error names it otherwise).
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .conventions import MASK_THRESHOLD, hole_mask_from_uint8
from .files import atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# What a picture carries from its file to the output file (Picture.info)
METADATA_KEYS = ("icc_profile", "exif", "dpi", "xmp")
# Inputs only: HEIC/HEIF (an iPhone's default) is read through the pillow-heif plugin when it is installed,
# and its result is written as PNG in folder mode (known pixels stay exact)
INPUT_ONLY_SUFFIXES = (".heic", ".heif", ".avif")
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")


# --------------------------------------------------------------------------------------------------
# Images in and out: pixels plus what must survive the round trip (alpha, ICC, EXIF, mode)
# --------------------------------------------------------------------------------------------------


@dataclass
class Picture:
    """An image split into what the network sees and what is carried through untouched.

    ``rgb`` is (H, W, 3) uint8 or uint16; ``alpha`` (H, W) of the same dtype or None; ``mode`` is the
    PIL mode to rebuild (``"RGB"``, ``"RGBA"``, ``"L"``, ``"LA"``, ``"I;16"``, ``"CMYK"``) or ``"array"``
    for numpy input, with ``array_shape`` the original numpy shape. For ``"CMYK"``, ``rgb`` is the sRGB
    rendering the network sees and ``cmyk`` (H, W, 4) uint8 the input's own ink values.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None = None
    mode: str = "RGB"
    info: dict[str, Any] = field(default_factory=dict)  # METADATA_KEYS: icc_profile, exif, xmp (bytes), dpi
    array_shape: tuple[int, ...] | None = None
    cmyk: np.ndarray | None = None
    orientation: int = 1  # the file's EXIF orientation, turned upright on reading (1 = stored upright)
    frames: int = 1  # frames or pages in the file (an animated GIF, a multi-page TIFF): only the first is read

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.rgb.shape[0], self.rgb.shape[1]

    @property
    def is_gray(self) -> bool:
        return self.mode in ("L", "LA", "I;16") or (self.array_shape is not None and len(self.array_shape) == 2)


def _check_png_depth(path: Path) -> None:
    """Pillow reads 16-bit RGB(A) and gray+alpha PNGs as 8-bit RGB(A) without a word; refuse them instead."""
    with open(path, "rb") as f:
        head = f.read(26)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or len(head) < 26 or head[24] != 16:
        return
    if head[25] in (2, 6):  # colour type RGB, RGBA
        raise ValueError(
            f"{path} is a 16-bit RGB PNG, which Pillow would silently reduce to 8 bits; save it as a 16-bit TIFF "
            "(read in 16 bits) or an 8-bit PNG, or pass the uint16 (H, W, 3) array to Inpainter"
        )
    if head[25] == 4:  # grey + alpha
        raise ValueError(
            f"{path} is a 16-bit gray+alpha PNG, which Pillow would silently reduce to 8 bits; drop the alpha "
            "(16-bit gray PNGs are read in 16 bits) or save it in 8 bits"
        )


def open_image_file(path: str | os.PathLike, what: str = "image", *, load_deep_tiff: bool = True):
    """Open an image file with Pillow (fully loaded), with one-line errors for the usual problems.

    With ``load_deep_tiff=False`` a 16-bit colour TIFF (:func:`is_deep_color_tiff`) is opened and not
    loaded: Pillow would decode it to 8 bits, and :func:`picture_from_deep_tiff` reads its pixels with
    tifffile instead."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist; check the path")
    if path.is_dir():
        raise FileNotFoundError(f"{what} {path} is a folder; pass a file (folders: --image DIR --mask DIR --output DIR)")
    try:
        try:
            img = Image.open(path)
        except UnidentifiedImageError:
            if not (_is_heif(path) and _register_heif_plugin()):
                raise
            img = Image.open(path)
        if load_deep_tiff or not is_deep_color_tiff(img):
            img.load()
    except UnidentifiedImageError:
        if _is_heif(path):
            raise ValueError(f"{what} {path} is a HEIC/HEIF photo, which Pillow reads only with the pillow-heif "
                             "plugin: pip install pillow-heif (or export the photo as JPEG)") from None
        with open(path, "rb") as f:
            if f.read(4) in (b"II*\x00", b"MM\x00*"):
                raise ValueError(f"{what} {path} is a TIFF whose layout Pillow cannot open (16-bit gray with alpha, "
                                 "for example); save it as 8- or 16-bit RGB, or 16-bit gray without alpha") from None
        raise ValueError(f"{what} {path} is not an image Pillow can read (PNG, JPEG, TIFF, WebP, BMP)") from None
    except Image.DecompressionBombError as exc:
        raise ValueError(f"{what} {path} is too large to open safely ({exc}); downscale it to under "
                         f"{2 * Image.MAX_IMAGE_PIXELS / 1e6:.3g} MP first, or in Python raise PIL.Image.MAX_IMAGE_PIXELS "
                         "if you trust the file") from None
    except OSError as exc:
        raise _unreadable(what, path, exc) from None
    if what == "image" and getattr(img, "format", None) == "PNG":
        _check_png_depth(path)
    return img


def _unreadable(what: str, path: str | os.PathLike, exc: Exception) -> ValueError:
    """The error for a file whose header opened and whose pixels did not."""
    return ValueError(f"{what} {path} cannot be read ({exc}); is the file truncated?")


def _is_heif(path: Path) -> bool:
    """An ISO-BMFF file whose brand is HEIF/HEIC (AVIF, the same container, Pillow reads itself)."""
    with open(path, "rb") as f:
        head = f.read(12)
    return head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


def _register_heif_plugin() -> bool:
    """Let Pillow open HEIC/HEIF through pillow-heif when it is installed; False when it is not."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


def is_deep_color_tiff(img) -> bool:
    """A TIFF whose colour samples have more than 8 bits (a raw developer's 16-bit export): Pillow opens
    it as 8-bit RGB(A) or CMYK without a word."""
    if getattr(img, "format", None) != "TIFF" or img.mode not in ("RGB", "RGBA", "RGBX", "CMYK"):
        return False
    bits = img.tag_v2.get(258, 8)  # BitsPerSample
    return (max(bits) if isinstance(bits, tuple) else bits) > 8


EXIF_ORIENTATION = 0x0112  # the EXIF tag

# EXIF orientation -> the numpy view that displays the picture upright, as PIL.ImageOps.exif_transpose does
_UPRIGHT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def picture_from_deep_tiff(path: str | os.PathLike, img) -> Picture:
    """A 16-bit RGB(A) TIFF read with tifffile in 16 bits, as a uint16 array picture: the EXIF orientation
    applied as for other files, its ICC profile and resolution kept (``info``) for writing it back.
    ``img`` is the same file opened by Pillow (for its tags)."""
    import tifffile

    if img.mode == "CMYK":  # Pillow's ICC transforms, which the CMYK path needs, work in 8 bits
        raise ValueError(f"{path} is a 16-bit CMYK TIFF, which Pillow would reduce to 8 bits; convert it to 16-bit "
                         "RGB (kept in 16 bits) or to 8-bit CMYK (kept in CMYK) first")
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        # from the file itself: Pillow (10.4 and later, not 10.0) turns a TIFF upright in load() and drops the tag
        orientation = int(page.tags[EXIF_ORIENTATION].value) if EXIF_ORIENTATION in page.tags else 1
        try:
            arr, axes = page.asarray(), page.axes
        except (ValueError, OSError) as exc:  # LZW, JPEG, ... need the optional codecs package
            if "imagecodecs" not in str(exc):
                raise _unreadable("image", path, exc) from None
            raise ValueError(f"{path} is a 16-bit TIFF compressed with {page.compression.name}, which tifffile "
                             "decodes only with the imagecodecs package: pip install imagecodecs (ctsdg will not "
                             "reduce it to 8 bits)") from None
    if axes.startswith("S"):  # planar: one plane per sample
        arr = np.moveaxis(arr, 0, -1)
    if arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"{path} is a TIFF of {arr.dtype} samples with shape {arr.shape}; ctsdg reads 8- and 16-bit "
                         "RGB(A) TIFFs: convert it to 16-bit RGB")
    arr = np.ascontiguousarray(_UPRIGHT.get(orientation, lambda a: a)(arr))
    alpha = arr[..., 3].copy() if arr.shape[2] == 4 else None
    info = _carried_metadata(img)
    if orientation in _UPRIGHT and "xmp" in info:  # turned upright: an XMP tiff:Orientation would turn it again
        info["xmp"] = _xmp_without_orientation(info["xmp"])
    return Picture(np.ascontiguousarray(arr[..., :3]), alpha, "array", info, arr.shape,
                   orientation=orientation if orientation in _UPRIGHT else 1)


def _xmp_without_orientation(xmp: bytes) -> bytes:
    """The XMP packet without its ``tiff:Orientation`` (attribute or element), as ``ImageOps.exif_transpose``
    leaves it for the files Pillow turns upright."""
    for pattern in (rb'tiff:Orientation="[0-9]"', rb"<tiff:Orientation>[0-9]</tiff:Orientation>"):
        xmp = re.sub(pattern, b"", xmp)
    return xmp


def _carried_metadata(img) -> dict[str, Any]:
    """The ICC profile, resolution and XMP packet of an opened file (JPEG, PNG, WebP and TIFF all put their
    XMP in ``info["xmp"]``), for :class:`Picture`'s ``info``; the EXIF block is the caller's."""
    info = {key: img.info[key] for key in ("icc_profile", "dpi") if img.info.get(key)}
    if img.info.get("xmp"):
        info["xmp"] = _as_bytes(img.info["xmp"])
    return info


def read_picture(path: str | os.PathLike) -> Picture:
    """An image file as a :class:`Picture`: 16-bit colour TIFFs in 16 bits (:func:`picture_from_deep_tiff`),
    everything else through Pillow (:func:`picture_from_pil`)."""
    img = open_image_file(path, load_deep_tiff=False)
    if is_deep_color_tiff(img):  # opened, not loaded: its file is still open
        with img:
            return picture_from_deep_tiff(path, img)
    return picture_from_pil(img)


def picture_from_pil(img) -> Picture:
    """PIL image -> :class:`Picture`, EXIF orientation applied (and kept in ``orientation``)."""
    from PIL import ImageOps

    orientation = img.getexif().get(EXIF_ORIENTATION, 1)  # the tag exif_transpose reads
    picture = _picture_from_upright(ImageOps.exif_transpose(img))  # which also drops the tag from EXIF and XMP
    picture.orientation = orientation if orientation in _UPRIGHT else 1
    picture.frames = int(getattr(img, "n_frames", 1))
    return picture


def _picture_from_upright(oriented) -> Picture:
    """An upright PIL image -> :class:`Picture`, in the mode it came in (what :func:`picture_to_pil` rebuilds)."""
    info = _carried_metadata(oriented)
    exif = oriented.getexif()
    if len(exif):
        info["exif"] = exif.tobytes()
    img = oriented
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    elif mode == "1":
        img, mode = img.convert("L"), "L"
    elif mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        gray = np.array(img).astype(np.uint16)
        return Picture(np.repeat(gray[..., None], 3, axis=2), None, "I;16", info)
    if mode == "RGB":
        return Picture(np.array(img), None, mode, info)
    if mode == "RGBA":
        arr = np.array(img)
        return Picture(np.ascontiguousarray(arr[..., :3]), arr[..., 3].copy(), mode, info)
    if mode == "L":
        gray = np.array(img)
        return Picture(np.repeat(gray[..., None], 3, axis=2), None, mode, info)
    if mode == "LA":
        arr = np.array(img)
        return Picture(np.repeat(arr[..., :1], 3, axis=2), arr[..., 1].copy(), mode, info)
    if mode == "CMYK":
        return Picture(cmyk_to_rgb(img), None, mode, info, cmyk=np.array(img))
    raise ValueError(f"images in PIL mode {mode!r} are not supported; convert the file to 8-bit RGB first "
                     "(in Python: img.convert('RGB'))")


def _cmyk_profile(icc: bytes | None):
    """The embedded ICC profile of a CMYK image as a Pillow ``ImageCmsProfile``, or None when there is
    none, it cannot be read, or it is not a CMYK profile (then Pillow's formulas are used instead)."""
    if not icc:
        return None
    try:
        from PIL import ImageCms

        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except Exception:  # no LittleCMS in this Pillow, or a damaged profile: PyCMSError, OSError, ...
        return None
    return profile if profile.profile.xcolor_space.strip() == "CMYK" else None


def cmyk_to_rgb(img) -> np.ndarray:
    """A CMYK PIL image -> uint8 (H, W, 3) sRGB: through its embedded ICC profile when it has one (what a
    colour-managed viewer shows), else Pillow's formula R = (255 - C)(255 - K) / 255."""
    profile = _cmyk_profile(img.info.get("icc_profile"))
    if profile is None:
        return np.array(img.convert("RGB"))
    from PIL import ImageCms

    return np.array(ImageCms.profileToProfile(img, profile, ImageCms.createProfile("sRGB"), outputMode="RGB"))


def rgb_to_cmyk(rgb: np.ndarray, icc: bytes | None) -> np.ndarray:
    """uint8 (H, W, 3) sRGB -> uint8 (H, W, 4) CMYK: through the ICC profile ``icc`` when it is a CMYK one
    (the printer's own separation), else the inverse of :func:`cmyk_to_rgb`'s formula (C = 255 - R, ...,
    K = 0)."""
    from PIL import Image

    img = Image.fromarray(rgb, "RGB")
    profile = _cmyk_profile(icc)
    if profile is None:
        return np.array(img.convert("CMYK"))
    from PIL import ImageCms

    return np.array(ImageCms.profileToProfile(img, ImageCms.createProfile("sRGB"), profile, outputMode="CMYK"))


def picture_from_array(arr: np.ndarray) -> Picture:
    """numpy (H, W, 3|4) or (H, W), uint8 or uint16 -> :class:`Picture`."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(arr).__name__}")
    if arr.dtype not in (np.uint8, np.uint16):
        fix = ("for floats in [0, 1] pass (x * 255).round().astype(np.uint8)" if arr.dtype.kind == "f" else
               "for integers in 0..255 pass x.astype(np.uint8)" if arr.dtype.kind in "iu" else
               "pass a uint8 array (0..255)")
        raise TypeError(f"image arrays must be uint8 (0..255) or uint16, got {arr.dtype}; {fix}")
    if arr.ndim == 2:
        return Picture(np.repeat(arr[..., None], 3, axis=2), None, "array", {}, arr.shape)
    if arr.ndim == 3 and arr.shape[2] == 3:
        return Picture(np.ascontiguousarray(arr), None, "array", {}, arr.shape)
    if arr.ndim == 3 and arr.shape[2] == 4:
        return Picture(np.ascontiguousarray(arr[..., :3]), arr[..., 3].copy(), "array", {}, arr.shape)
    raise ValueError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}")


def _gray_of(rgb: np.ndarray) -> np.ndarray:
    """Luma (ITU-R 601, as PIL's convert('L')) of an (H, W, 3) array, same dtype, rounded; pixels whose
    three channels are equal (every known pixel of a gray input) keep their value exactly."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = np.round(r * 0.299 + g * 0.587 + b * 0.114).astype(rgb.dtype)
    return np.where((r == g) & (g == b), r, y)


def picture_to_array(pic: Picture, rgb: np.ndarray) -> np.ndarray:
    """Rebuild the numpy layout the user gave."""
    shape = pic.array_shape
    if len(shape) == 2:
        return _gray_of(rgb)
    if shape[2] == 4:
        return np.concatenate([rgb, pic.alpha[..., None]], axis=2)
    return rgb


def picture_to_pil(pic: Picture, rgb: np.ndarray):
    """Rebuild a PIL image in the input's mode; ``info`` keeps ICC/EXIF/XMP for saving."""
    from PIL import Image

    if pic.mode == "array":
        return Image.fromarray(picture_to_array(pic, rgb))
    if pic.mode == "RGB":
        out = Image.fromarray(rgb, "RGB")
    elif pic.mode == "RGBA":
        out = Image.fromarray(np.concatenate([rgb, pic.alpha[..., None]], axis=2), "RGBA")
    elif pic.mode in ("L", "LA", "I;16"):
        gray = _gray_of(rgb)
        if pic.mode == "LA":
            out = Image.fromarray(np.stack([gray, pic.alpha], axis=2), "LA")
        else:
            out = Image.fromarray(gray)  # uint8 -> "L", uint16 -> "I;16"
    elif pic.mode == "CMYK":  # the input's inks where the picture is unchanged, only the fill separated anew
        changed = (rgb != pic.rgb).any(axis=2)
        inks = pic.cmyk.copy()
        if changed.any():
            inks[changed] = rgb_to_cmyk(rgb[changed][None], pic.info.get("icc_profile"))[0]
        out = Image.fromarray(inks, "CMYK")
    else:  # pragma: no cover - picture_from_pil only produces the modes above
        raise ValueError(f"cannot rebuild PIL mode {pic.mode}")
    out.info.update({k: v for k, v in pic.info.items() if k in METADATA_KEYS})
    return out


def check_image_output(path: str | os.PathLike, *, overwrite: bool = False,
                       inputs: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Refuse an output path that :func:`save_image_atomic` could not write, before any work is done:
    a missing folder, a folder as the name, no image extension, one of ``inputs``, or an existing file
    without ``overwrite``."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {path.parent} does not exist; create it first (mkdir -p {path.parent})")
    if path.is_dir():
        raise ValueError(f"output {path} is a folder; give an output file name")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"output {path} has no image extension; use one of {', '.join(IMAGE_SUFFIXES)}")
    for inp in inputs:
        if inp is not None and Path(inp).exists() and path.exists() and os.path.samefile(path, inp):
            raise ValueError(f"output {path} is an input file; refusing to overwrite it, choose another output")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it")
    return path


def save_image_atomic(img, path: str | os.PathLike, *, overwrite: bool = False,
                      inputs: tuple[str | os.PathLike, ...] = (), info: dict[str, Any] | None = None) -> Path:
    """Save a PIL image via a temp file in the same folder + ``os.replace`` (never half-written).

    Keeps the ICC profile, EXIF and XMP found in ``img.info``. Refuses to write over an input, or over an
    existing file unless ``overwrite``. What a format cannot store is refused (alpha in JPEG/BMP,
    16-bit in JPEG/BMP/WebP, CMYK in PNG/BMP/WebP); WebP is written lossless, so known pixels stay exact.
    A uint16 (H, W, 3|4) numpy array (what a 16-bit RGB TIFF comes back as) is written as a 16-bit TIFF
    with tifffile, with the ICC profile and resolution in ``info``; other formats are refused for it.
    """
    path = check_image_output(path, overwrite=overwrite, inputs=inputs)
    fmt = _pil_format(path.suffix.lower())
    if isinstance(img, np.ndarray):
        if img.dtype == np.uint16 and img.ndim == 3 and img.shape[2] in (3, 4):
            _refuse_unstorable(path, "RGB;16")
            return _save_deep_tiff(img, path, info or {})
        from PIL import Image

        img = Image.fromarray(img)
    _refuse_unstorable(path, img.mode)
    kwargs: dict[str, Any] = {}
    for key in ("icc_profile", "exif", "dpi"):
        if img.info.get(key):
            kwargs[key] = img.info[key]
    if img.info.get("xmp"):
        kwargs.update(_xmp_for(fmt, _as_bytes(img.info["xmp"]), kwargs.get("exif")))
    if fmt == "JPEG":
        kwargs.update(quality=95, subsampling=0)
    elif fmt == "WEBP":
        kwargs.update(lossless=True, exact=True)  # Pillow's default is lossy: known pixels would change
    with atomic_path(path, suffix=path.suffix) as tmp:
        img.save(tmp, format=fmt, **kwargs)
    return path


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _xmp_for(fmt: str, xmp: bytes, exif: bytes | None) -> dict[str, Any]:
    """Pillow's save arguments that carry the XMP packet ``xmp`` into ``fmt`` (BMP has no place for it)."""
    from PIL import Image, PngImagePlugin

    if fmt in ("JPEG", "WEBP"):
        return {"xmp": xmp}
    if fmt == "PNG":
        pnginfo = PngImagePlugin.PngInfo()
        pnginfo.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8", "replace"))
        return {"pnginfo": pnginfo}
    if fmt == "TIFF":  # tag 700, in the same tag set as the EXIF fields (a separate tiffinfo would drop them)
        tags = Image.Exif()
        if exif:
            tags.load(exif)
        tags[700] = xmp
        return {"exif": tags}
    return {}


def _refuse_unstorable(path: Path, mode: str) -> None:
    """Refuse an output format that cannot hold pixels of PIL ``mode`` (``"RGB;16"``: 16-bit colour), where
    Pillow would drop the alpha (BMP) or the low 8 bits (WebP) without a word, or fail."""
    fmt = _pil_format(path.suffix.lower())
    if fmt in ("JPEG", "BMP") and mode in ("RGBA", "LA"):
        raise ValueError(f"{fmt} cannot store the alpha channel of this image; write {path.with_suffix('.png')} instead")
    if fmt in ("JPEG", "BMP", "WEBP") and mode == "I;16":
        raise ValueError(f"{fmt} cannot store 16-bit pixels; write {path.with_suffix('.png')} instead")
    if fmt in ("PNG", "BMP", "WEBP") and mode == "CMYK":
        raise ValueError(f"{fmt} cannot store CMYK pixels; write {path.with_suffix('.tif')} (lossless) or "
                         f"{path.with_suffix('.jpg')} instead")
    if fmt != "TIFF" and mode == "RGB;16":
        raise ValueError(f"{fmt} cannot store this 16-bit colour image here; write {path.with_suffix('.tif')} instead")


def check_image_storable(image_path: str | os.PathLike, output_path: str | os.PathLike) -> None:
    """Refuse, from the input's header alone and before any compute, an output format that
    :func:`save_image_atomic` would refuse for this input's result (alpha in JPEG, CMYK in PNG, ...)."""
    from PIL import Image

    try:
        with Image.open(image_path) as img:  # reads the header, not the pixels
            mode = img.mode
            if mode == "P":
                mode = "RGBA" if "transparency" in img.info else "RGB"
            elif mode.startswith("I;16"):
                mode = "I;16"
            elif is_deep_color_tiff(img):
                mode = "RGB;16"
    except (OSError, ValueError, Image.DecompressionBombError):
        return  # an unreadable or too large file gets its own message when it is read
    _refuse_unstorable(Path(output_path), mode)


def _save_deep_tiff(arr: np.ndarray, path: Path, info: dict[str, Any]) -> Path:
    """uint16 (H, W, 3|4) -> a 16-bit RGB(A) TIFF (deflate-compressed, lossless), atomically."""
    import tifffile

    kwargs: dict[str, Any] = {"photometric": "rgb", "compression": "zlib"}
    if arr.shape[2] == 4:
        kwargs["extrasamples"] = ["unassalpha"]
    if info.get("icc_profile"):  # tag 34675 InterColorProfile, as bytes (tifffile's iccprofile= is 2023+)
        kwargs["extratags"] = [(34675, 7, len(info["icc_profile"]), info["icc_profile"], True)]
    if info.get("dpi"):
        # the unit as its own argument: tifffile 2025 refuses it inside the tuple (2026 accepts both)
        kwargs["resolution"] = (float(info["dpi"][0]), float(info["dpi"][1]))
        kwargs["resolutionunit"] = "INCH"
    if info.get("xmp"):  # tag 700 XMP, BYTE
        kwargs.setdefault("extratags", []).append((700, 1, len(info["xmp"]), info["xmp"], True))
    with atomic_path(path, suffix=path.suffix) as tmp:
        tifffile.imwrite(tmp, arr, **kwargs)
    return path


def _pil_format(suffix: str) -> str:
    return {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
            ".webp": "WEBP"}[suffix]


def tensor_hint(value: Any) -> str:
    """What to pass instead when ``value`` is a torch tensor given where a numpy array is expected, else ""."""
    if type(value).__name__ != "Tensor":
        return ""
    return ("; for a torch tensor pass tensor.cpu().numpy(): an image as (H, W, 3) uint8, from (3, H, W) floats "
            "in [0, 1] (t.permute(1, 2, 0) * 255).round().byte().cpu().numpy(); a mask as (H, W) with 255 = fill")


def hole_from_any(mask, size: tuple[int, int], *, resize_mask: bool = False, orientation: int = 1,
                  notes: list[str] | None = None) -> np.ndarray:
    """A user mask (path, PIL image, numpy uint8/bool; white = fill) -> bool (H, W) hole array.

    A one-channel integer mask holding only 0 and 1 is read as a label mask (1 = fill), not as an
    almost black one.

    ``orientation`` is the image's EXIF orientation, which ctsdg turns upright on reading
    (:attr:`Picture.orientation`). When it turns the picture by 90° (5 to 8) and the mask has the size
    the file stores, the mask was drawn on the stored pixels: it is turned the same way, and a line
    saying so goes to ``notes``.

    Raises a one-line ValueError when its size differs from the image's ``size`` (height, width)
    unless ``resize_mask`` (nearest neighbour, the only resampling that keeps a mask binary).
    """
    from PIL import Image, ImageOps

    if isinstance(mask, (str, os.PathLike)):
        mask = open_image_file(mask, what="mask")
    if isinstance(mask, Image.Image):
        mask = ImageOps.exif_transpose(mask)
        if mask.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
            values = np.array(mask)
            # 16-bit masks are thresholded at half their range; an "I" image holding 0..255 is an 8-bit
            # mask converted by the caller (a 16-bit mask that dark would be all keep anyway)
            wide = mask.mode != "I" or values.max(initial=0) > 255
            mask = values > (np.iinfo(np.uint16).max // 2) if wide else values.astype(np.uint8)
        else:
            if mask.mode not in ("L", "RGB", "RGBA", "LA"):
                mask = mask.convert("RGBA" if mask.mode == "P" and "transparency" in mask.info else "L")
            mask = np.array(mask)
            if mask.ndim == 3 and mask.shape[2] == 2:  # LA: treat like RGBA (alpha brush on black)
                mask = np.concatenate([mask[..., :1].repeat(3, axis=2), mask[..., 1:]], axis=2)
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"mask must be a path, PIL image or numpy array, got {type(mask).__name__}{tensor_hint(mask)}")
    if mask.dtype == np.uint16:
        mask = (mask >> 8).astype(np.uint8)
    hole = hole_mask_from_uint8(mask)[0].numpy() > 0.5  # also reads 0/1 label masks and other integer types
    h, w = size
    if orientation in (5, 6, 7, 8) and hole.shape == (w, h) != (h, w):
        hole = np.ascontiguousarray(_UPRIGHT[orientation](hole))
        msg = (f"the mask is {h}x{w}, the image as its file stores it; the image's EXIF orientation turns it "
               f"upright to {w}x{h}, so the mask was turned the same way")
        if notes is not None:
            notes.append(msg)
    if hole.shape != (h, w):
        if not resize_mask:
            raise ValueError(
                f"mask is {hole.shape[1]}x{hole.shape[0]} but image is {w}x{h}; resize the mask with "
                "nearest-neighbour or pass --resize-mask (resize_mask=True)"
            )
        hole = np.array(Image.fromarray(hole.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > MASK_THRESHOLD
    return hole


def dilate_hole(hole: np.ndarray, pixels: int) -> np.ndarray:
    """Grow the hole by ``pixels`` (Euclidean disc): hand-drawn masks rarely cover the whole object."""
    if pixels <= 0 or not hole.any():
        return hole
    from scipy import ndimage

    return ndimage.distance_transform_edt(~hole) <= pixels
