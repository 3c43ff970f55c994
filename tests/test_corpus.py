"""Photo corpus recipe: licences from DEP-5 copyright files, photo selection, manifest, checksums.

The fast tests build fake unpacked packages; the real download (~170 MB of .deb files) is a slow test.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from ctsdg.corpus import (
    EXCLUDED,
    collect_debian_root,
    extract_deb,
    gather_photos,
    licence_for,
    parse_dep5_licences,
    read_manifest,
    select_debian_photos,
    unlisted_files,
    write_manifest,
)

LOMIRI_COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: lomiri-wallpapers

Files: *
Copyright: 2010-2016 Ubuntu community contributors
License: CC-BY-SA-3.0

Files: 16.04/Bridge_by_Sander_Klootwijk.jpg
Copyright: 2018. Sander Klootwijk
License: CC-BY-SA-4.0

Files: 16.04/seeding_by_Clements_Engelhardt.jpg
 16.04/other.jpg
Copyright: Clemens Engelhardt, 2018
License: CC0-1.0

Files: debian/*
Copyright: 2020 Mike Gabriel
License: Expat

License: Expat
 Permission is hereby granted ...
"""


def photo(path, w=40, h=30, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
        path, quality=90
    )
    return path


def test_dep5_parsing_and_licence_lookup():
    stanzas = parse_dep5_licences(LOMIRI_COPYRIGHT)
    assert [s[1] for s in stanzas] == ["CC-BY-SA-3.0", "CC-BY-SA-4.0", "CC0-1.0", "Expat"]
    # the second pattern of a stanza comes on an indented continuation line
    assert stanzas[2][0] == ["16.04/seeding_by_Clements_Engelhardt.jpg", "16.04/other.jpg"]
    bg = "/usr/share/backgrounds/"
    assert licence_for(bg + "Bridge_by_Sander_Klootwijk.jpg", stanzas, "?") == "CC-BY-SA-4.0"
    assert licence_for(bg + "other.jpg", stanzas, "?") == "CC0-1.0"
    # `debian/*` is the packaging, not the photos: an unlisted photo falls back to `Files: *`
    assert licence_for(bg + "unlisted.jpg", stanzas, "?") == "CC-BY-SA-3.0"
    assert licence_for(bg + "x.jpg", [], "see Debian copyright file") == "see Debian copyright file"


def test_wildcard_patterns_need_their_folder():
    stanzas = parse_dep5_licences(
        "Files: nature/*\nCopyright: x\nLicense: GPL-2+\n\nFiles: abstract/*\nLicense: CC0\n"
    )
    assert licence_for("/usr/share/backgrounds/mate/nature/Aqua.jpg", stanzas, "?") == "GPL-2+"
    assert licence_for("/usr/share/backgrounds/mate/abstract/Silk.png", stanzas, "?") == "CC0"
    assert licence_for("/usr/share/backgrounds/mate/desktop/Stripes.png", stanzas, "?") == "?"


def test_selection_keeps_photos_only_and_the_largest_plasma_size(tmp_path):
    lomiri = tmp_path / "lomiri"
    for name in ("Bridge_by_Sander_Klootwijk.jpg", "umang_by_Abhishek_Mudgal.jpg"):
        photo(lomiri / "usr/share/backgrounds" / name)
    assert [n for _, n in select_debian_photos("lomiri-wallpapers-16.04", lomiri)] == [
        "Bridge_by_Sander_Klootwijk.jpg"
    ]
    assert "umang_by_Abhishek_Mudgal.jpg" in EXCLUDED

    plasma = tmp_path / "plasma" / "usr/share/wallpapers"
    # file names lie about sizes: the largest is chosen by measuring pixels
    photo(plasma / "Path/contents/images/1920x1080.jpg", 64, 40)
    photo(plasma / "Path/contents/images/2560x1600.jpg", 32, 20)
    photo(plasma / "Altai/contents/images/5120x2880.png", 64, 40)  # an illustration: not in PLASMA_PHOTOS
    chosen = select_debian_photos("plasma-workspace-wallpapers", tmp_path / "plasma")
    assert [(p.name, n) for p, n in chosen] == [("1920x1080.jpg", "Path.jpg")]

    mate = tmp_path / "mate" / "usr/share/backgrounds/mate"
    photo(mate / "nature/Aqua.jpg")
    photo(mate / "nature/Blinds.jpg")
    photo(mate / "abstract/Silk.jpg")
    assert [n for _, n in select_debian_photos("mate-backgrounds", tmp_path / "mate")] == ["Aqua.jpg"]

    with pytest.raises(ValueError, match="unknown photo package"):
        select_debian_photos("gnome-backgrounds", tmp_path)


def test_collect_writes_files_and_a_verifiable_manifest(tmp_path):
    root = tmp_path / "pkg"
    src = photo(root / "usr/share/backgrounds/Bridge_by_Sander_Klootwijk.jpg", 50, 30)
    doc = root / "usr/share/doc/lomiri-wallpapers-16.04/copyright"
    doc.parent.mkdir(parents=True)
    doc.write_text(LOMIRI_COPYRIGHT)
    out = tmp_path / "corpus"
    records = collect_debian_root("lomiri-wallpapers-16.04", "20.04.0-2", root, out)
    write_manifest(out, records)
    (r,) = records
    assert r.file == "train/lomiri-wallpapers-16.04__Bridge_by_Sander_Klootwijk.jpg"
    assert (out / r.file).read_bytes() == src.read_bytes()  # copied byte for byte
    assert r.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert (r.licence, r.width, r.height, r.split) == ("CC-BY-SA-4.0", 50, 30, "train")
    assert r.original_file == "/usr/share/backgrounds/Bridge_by_Sander_Klootwijk.jpg"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 1 and manifest["splits"] == {"train": 1, "val": 0}
    csv_lines = (out / "manifest.csv").read_text().splitlines()
    assert csv_lines[0].startswith("file,split,source_package") and r.sha256 in csv_lines[1]
    assert read_manifest(out, verify=True) == records
    (out / r.file).write_bytes(b"changed")
    with pytest.raises(ValueError, match="does not match its sha256"):
        read_manifest(out, verify=True)


def test_refuses_a_folder_that_is_not_a_corpus(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no manifest.json"):
        gather_photos(tmp_path / "busy", packages=())
    assert (tmp_path / "busy" / "thesis.txt").read_text() == "mine"


@pytest.mark.slow
@pytest.mark.registries
def test_real_corpus_from_the_registries(tmp_path):
    records = gather_photos(tmp_path / "photos")
    train = [r for r in records if r.split == "train"]
    val = [r for r in records if r.split == "val"]
    assert len(train) >= 35 and len(val) == 10
    assert {r.source_package for r in train} == {
        "lomiri-wallpapers-16.04",
        "lomiri-wallpapers-20.04",
        "mate-backgrounds",
        "plasma-workspace-wallpapers",
    }
    assert all(min(r.width, r.height) >= 1000 for r in train)
    assert not {r.file.split("__")[1] for r in train} & set(EXCLUDED)
    assert all(r.licence and r.licence != "see Debian copyright file" for r in records)
    assert read_manifest(tmp_path / "photos", verify=True) == records


def make_deb(path, files: dict[str, bytes]):
    """A minimal .deb: an ar archive with debian-binary, control.tar.gz and data.tar.xz."""

    def tar_bytes(entries, mode):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode=mode) as tar:
            for name, data in entries.items():
                info = tarfile.TarInfo("./" + name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    members = [
        ("debian-binary", b"2.0\n"),
        ("control.tar.gz", tar_bytes({"control": b"Package: x\n"}, "w:gz")),
        ("data.tar.xz", tar_bytes(files, "w:xz")),
    ]
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    path.write_bytes(bytes(out))
    return path


def test_gather_from_a_downloaded_deb_without_dpkg_or_network(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.full((12, 20, 3), 90, np.uint8)).save(buf, format="JPEG")
    jpeg = buf.getvalue()
    debs = tmp_path / "debs"
    debs.mkdir()
    make_deb(
        debs / "lomiri-wallpapers-16.04_20.04.0-2_all.deb",
        {
            "usr/share/backgrounds/seeding_by_Clements_Engelhardt.jpg": jpeg,
            "usr/share/backgrounds/umang_by_Abhishek_Mudgal.jpg": jpeg,  # excluded: a gradient
            "usr/share/doc/lomiri-wallpapers-16.04/copyright": LOMIRI_COPYRIGHT.encode(),
        },
    )
    extract_deb(debs / "lomiri-wallpapers-16.04_20.04.0-2_all.deb", tmp_path / "x")
    assert (tmp_path / "x/usr/share/backgrounds/seeding_by_Clements_Engelhardt.jpg").read_bytes() == jpeg
    records = gather_photos(
        tmp_path / "corpus", debs_dir=debs, packages=("lomiri-wallpapers-16.04",), python_photos=False
    )
    assert [(r.file, r.licence, r.package_version, r.width, r.height) for r in records] == [
        ("train/lomiri-wallpapers-16.04__seeding_by_Clements_Engelhardt.jpg", "CC0-1.0", "20.04.0-2", 20, 12)
    ]
    assert read_manifest(tmp_path / "corpus", verify=True) == records
    # a re-run replaces the photos of the previous corpus; a file it did not gather is left in place, named
    (tmp_path / "corpus" / "train" / "mine.jpg").write_bytes(jpeg)
    again = gather_photos(
        tmp_path / "corpus", debs_dir=debs, packages=("lomiri-wallpapers-16.04",), python_photos=False
    )
    assert again == records and read_manifest(tmp_path / "corpus", verify=True) == records
    assert (tmp_path / "corpus" / "train" / "mine.jpg").read_bytes() == jpeg
    assert unlisted_files(tmp_path / "corpus", again) == [tmp_path / "corpus" / "train" / "mine.jpg"]
    assert sorted(p.name for p in (tmp_path / "corpus").iterdir()) == ["manifest.csv", "manifest.json", "train"]


@pytest.fixture
def corpus(tmp_path):
    """A corpus gathered from a downloaded .deb: (folder, debs folder, records)."""
    buf = io.BytesIO()
    Image.fromarray(np.full((12, 20, 3), 90, np.uint8)).save(buf, format="JPEG")
    debs = tmp_path / "debs"
    debs.mkdir()
    make_deb(debs / "lomiri-wallpapers-16.04_20.04.0-2_all.deb", {
        "usr/share/backgrounds/seeding_by_Clements_Engelhardt.jpg": buf.getvalue(),
        "usr/share/doc/lomiri-wallpapers-16.04/copyright": LOMIRI_COPYRIGHT.encode(),
    })
    out = tmp_path / "corpus"
    records = gather_photos(out, debs_dir=debs, packages=("lomiri-wallpapers-16.04",), python_photos=False)
    return out, debs, records


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_rerun_never_deletes_files_the_manifest_does_not_list(corpus):
    """QA: `ctsdg data photos --out DIR --no-debian` removed DIR/train/ entirely, the user's own photo too."""
    out, debs, records = corpus
    mine = out / "train" / "my.jpg"
    mine.write_bytes(b"my own photo")
    assert gather_photos(out, debs_dir=debs, packages=("lomiri-wallpapers-16.04",), python_photos=False) == records
    assert mine.read_bytes() == b"my own photo"
    assert read_manifest(out, verify=True) == records and unlisted_files(out, records) == [mine]


def test_a_split_not_gathered_keeps_its_photos(corpus, capsys):
    """QA: `--no-debian` on an existing corpus replaced its train/ split with nothing; a split not gathered this
    time now keeps its photos and manifest rows, and the command says so."""
    from ctsdg.cli import main

    out, _, records = corpus
    assert gather_photos(out, packages=(), python_photos=False) == records
    assert read_manifest(out, verify=True) == records
    assert main(["data", "photos", "--out", str(out), "--no-debian", "--no-python-photos"]) == 0
    assert "train: 1 photos from 1 packages, kept from the previous corpus" in capsys.readouterr().out
    assert read_manifest(out, verify=True) == records
    # a kept row whose file has gone is dropped, so that the manifest never lists a missing file
    (out / records[0].file).unlink()
    assert gather_photos(out, packages=(), python_photos=False) == []
    assert read_manifest(out, verify=True) == []


def test_missing_apt_get_is_refused_before_the_corpus_is_touched(corpus, monkeypatch):
    """QA: without apt-get on PATH the re-run failed only after val/ (and train/) had been deleted."""
    out, debs, records = corpus
    before = snapshot(out)
    monkeypatch.setenv("PATH", str(out.parent / "no-programs-here"))
    with pytest.raises(RuntimeError, match="apt-get is not available; pass --debs-dir"):
        gather_photos(out, packages=("lomiri-wallpapers-16.04",), python_photos=False)
    with pytest.raises(RuntimeError, match=r"holds no mate-backgrounds_\*\.deb and apt-get is not available"):
        gather_photos(out, debs_dir=debs, packages=("lomiri-wallpapers-16.04", "mate-backgrounds"))
    assert snapshot(out) == before and read_manifest(out, verify=True) == records


def test_a_failed_gathering_leaves_the_previous_corpus_as_it_was(corpus):
    out, debs, records = corpus
    (debs / "lomiri-wallpapers-20.04_1_all.deb").write_bytes(b"PK not a deb")
    before = snapshot(out)
    with pytest.raises(ValueError, match="not a Debian package"):
        gather_photos(out, debs_dir=debs, packages=("lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04"),
                      python_photos=False)
    assert snapshot(out) == before and read_manifest(out, verify=True) == records
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv", "manifest.json", "train"]  # no temp folder
    with pytest.raises(ValueError, match="not a Debian package"):  # into a new folder: none is left behind
        gather_photos(out.parent / "new", debs_dir=debs, packages=("lomiri-wallpapers-20.04",))
    assert not (out.parent / "new").exists()


def test_a_gathered_photo_never_replaces_a_file_of_the_same_name_it_did_not_gather(corpus):
    out, debs, records = corpus
    (out / "manifest.json").write_text(json.dumps({"photos": []}))  # as if the photo had been put there by hand
    (out / records[0].file).write_bytes(b"not the package's photo")
    with pytest.raises(FileExistsError, match="is not in .*manifest.json .* move it elsewhere"):
        gather_photos(out, debs_dir=debs, packages=("lomiri-wallpapers-16.04",), python_photos=False)
    assert (out / records[0].file).read_bytes() == b"not the package's photo"


def test_extract_deb_refuses_other_files(tmp_path):
    (tmp_path / "x.deb").write_bytes(b"PK\x03\x04 a zip")
    with pytest.raises(ValueError, match="not a Debian package"):
        extract_deb(tmp_path / "x.deb", tmp_path / "out")
