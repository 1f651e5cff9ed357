"""Data sets as real downloads leave them: upper-case extensions, a Mac's hidden files, a broken
file, a capture short of a band, an identity with one capture, --data-root a folder off.

Each either loads exactly the captures there are, or stops before training with one error that
names what is wrong and what to do. The images are tiny (16×16) and written here.
"""

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from export.data import LayoutError, from_synth, load_dataset, reference_split
from export.synth import generate_arrays


def _img(i: int, j: int) -> np.ndarray:
    return np.full((16, 16), 10 * i + j, np.uint8)


def _casiam(root: Path, ids: int = 3, samples: int = 2, ext: str = ".jpg") -> Path:
    for band in ("casia_700", "casia_460", "casia_850"):
        d = root / "Casia_M" / band
        d.mkdir(parents=True)
        for i in range(1, ids + 1):
            for j in range(1, samples + 1):
                name = d / f"{i:03d}_{j:02d}.jpg"
                cv2.imwrite(str(name), _img(i, j))
                name.rename(name.with_suffix(ext))
    return root


def _tjppv(root: Path, ids: int = 2, samples: int = 2, vein_ext: str = ".bmp") -> Path:
    prints = root / "Tongji_jpg"
    veins = root / "Palmvein_ROI_gray_128x128" / "session1"
    prints.mkdir(parents=True)
    veins.mkdir(parents=True)
    for i in range(1, ids + 1):
        for j in range(1, samples + 1):
            cv2.imwrite(str(prints / f"{i:04d}_{j:04d}.jpg"), _img(i, j))
            v = veins / f"{(i - 1) * 10 + j:05d}.bmp"
            cv2.imwrite(str(v), _img(i, j))
            v.rename(v.with_suffix(vein_ext))
    return root


def _folders(root: Path, kinds: dict[str, str], ids: int = 2, samples: int = 2) -> Path:
    """generic (kinds print/vein -> extension) or iitd (IITD -> .bmp) folders per identity."""
    for kind, ext in kinds.items():
        for i in range(1, ids + 1):
            d = root / kind / f"{i:04d}"
            d.mkdir(parents=True)
            for j in range(1, samples + 1):
                f = d / f"{j}.png"
                cv2.imwrite(str(f), _img(i, j))
                f.rename(f.with_suffix(ext))
    return root


def test_upper_case_extensions_load(tmp_path):
    a = load_dataset("casiam", _casiam(tmp_path / "c", ext=".JPG"))
    assert len(a) == 6 and a.print[0].shape == (128, 128, 3)
    assert len(load_dataset("tjppv", _tjppv(tmp_path / "t", vein_ext=".BMP"))) == 4
    generic = _folders(tmp_path / "g", {"print": ".png", "vein": ".PNG"})
    assert load_dataset("generic", generic).vein.shape == (4, 128, 128, 1)


def test_hidden_files_and_stray_files_are_not_captures(tmp_path):
    """macOS copies leave ``._name`` beside every file (not an image, under an image's name)."""
    generic = _folders(tmp_path / "g", {"print": ".png", "vein": ".png"})
    iitd = _folders(tmp_path / "i", {"IITD": ".bmp"})
    casiam = _casiam(tmp_path / "c")
    for folder in [*generic.glob("*/*"), *iitd.glob("*/*"), *casiam.glob("*/*")]:
        for f in list(folder.iterdir()):
            (folder / f"._{f.name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
        for name in ("Thumbs.db", ".DS_Store", "README.txt"):
            (folder / name).write_bytes(b"x")
    (generic / "print" / "__MACOSX").mkdir()
    (iitd / "IITD" / ".thumbnails").mkdir()
    for ds, root, n in (("generic", generic, 4), ("iitd", iitd, 4), ("casiam", casiam, 6)):
        a = load_dataset(ds, root)
        assert len(a) == n and len(a.identities) == n // 2, ds
        assert sorted(a.samples.tolist()) == sorted([1, 2] * (n // 2)), ds


def test_an_unreadable_image_is_named_before_training(tmp_path):
    root = _casiam(tmp_path / "c")
    (root / "Casia_M" / "casia_460" / "002_02.jpg").write_bytes(b"")  # a download cut short
    with pytest.raises(LayoutError, match=r"casia_460/002_02\.jpg\): an empty or cut-short"):
        load_dataset("casiam", root)


def test_every_capture_short_of_a_band_is_named_at_once(tmp_path):
    root = _casiam(tmp_path / "c")
    (root / "Casia_M" / "casia_850" / "001_02.jpg").unlink()
    (root / "Casia_M" / "casia_460" / "003_01.jpg").unlink()
    with pytest.raises(LayoutError) as e:
        load_dataset("casiam", root)
    assert "2 capture(s)" in str(e.value)
    assert "casia_850/001_02.jpg" in str(e.value) and "casia_460/003_01.jpg" in str(e.value)


@pytest.mark.parametrize(
    ("ds", "make", "given", "right"),
    [
        ("casiam", _casiam, "..", "."),  # the folder above the one that holds Casia_M
        ("casiam", _casiam, "Casia_M/casia_850", "Casia_M"),  # inside the data set
        ("iitd", lambda r: _folders(r, {"IITD": ".bmp"}), "IITD/0001", "."),
        ("generic", lambda r: _folders(r, {"print": ".png"}), "..", "."),
        ("tjppv", _tjppv, "Palmvein_ROI_gray_128x128/session1", "."),
    ],
)
def test_a_root_a_folder_off_names_the_right_one(tmp_path, ds, make, given, right):
    root = make(tmp_path / "sets" / "mine")
    with pytest.raises(LayoutError) as e:
        load_dataset(ds, root / given if given != ".." else root.parent)
    assert f"use --data-root {(root / right).resolve()}" in str(e.value)
    load_dataset(ds, root / right)


def test_tjppv_loads_from_either_of_its_folders(tmp_path):
    """As casiam loads from Casia_M itself, tjppv loads from Tongji_jpg."""
    root = _tjppv(tmp_path / "t")
    assert len(load_dataset("tjppv", root / "Tongji_jpg")) == 4


def test_identities_with_one_capture_are_all_named_with_what_to_do():
    p, v = generate_arrays(4, 4, "easy", 0)
    a = from_synth(p, v)
    keep = ~(np.isin(a.labels, [1, 3]) & (a.samples > 1))
    with pytest.raises(LayoutError) as e:
        reference_split(a.subset(np.flatnonzero(keep)))
    msg = str(e.value)
    assert "2 identit(y/ies) with a single capture (2, 4)" in msg and "delete their files" in msg


def test_a_generic_set_without_its_vein_folder_says_it_trains_print_only(tmp_path, caplog):
    root = _folders(tmp_path / "g", {"print": ".png", "Veins": ".png"})
    with caplog.at_level("WARNING", logger="export.data.layouts"):
        assert load_dataset("generic", root).vein is None
    assert "print only" in caplog.text and "found Veins: rename it vein" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="export.data.layouts"):
        load_dataset("generic", _folders(tmp_path / "both", {"print": ".png", "vein": ".png"}))
    assert "print only" not in caplog.text


def test_a_capture_short_of_the_first_band_is_named_not_left_out(tmp_path):
    """A capture missing from casia_700 (the first band) alone was dropped without a word, while
    one missing from any other band was named."""
    root = _casiam(tmp_path / "c")
    (root / "Casia_M" / "casia_700" / "002_01.jpg").unlink()
    with pytest.raises(LayoutError, match=r"1 capture\(s\) lack .*\(casia_700/002_01\.jpg\)"):
        load_dataset("casiam", root)


def test_images_off_the_layouts_names_are_named_and_two_names_for_one_capture_refused(
    tmp_path, caplog
):
    root = _casiam(tmp_path / "c")
    band = root / "Casia_M" / "casia_700"
    for name in ("001_01 (1).jpg", "001_01.png", "IMG_0001.jpg"):  # a copy, a conversion
        (band / name).write_bytes((band / "001_01.jpg").read_bytes())
    with caplog.at_level("WARNING", logger="export.data.layouts"):
        assert len(load_dataset("casiam", root)) == 6
    assert f"3 image file(s) in {band} are not named III_SS.jpg and are left out" in caplog.text
    assert "001_01 (1).jpg, 001_01.png, IMG_0001.jpg" in caplog.text
    (band / "001_1.jpg").write_bytes((band / "001_01.jpg").read_bytes())
    with pytest.raises(LayoutError, match=r"001_01\.jpg and 001_1\.jpg in .* the same capture"):
        load_dataset("casiam", root)


def test_identity_folders_without_images_are_named_not_left_out_silently(tmp_path, caplog):
    """An identity folder holding no images (a failed copy, .webp files) or a vein folder with
    no print folder was left out of the set without a word: fewer identities than meant."""
    generic = _folders(tmp_path / "g", {"print": ".png", "vein": ".png"})
    (generic / "print" / "0003").mkdir()
    (generic / "print" / "0003" / "1.webp").write_bytes(b"x")
    (generic / "vein" / "0003").mkdir()
    (generic / "vein" / "0009").mkdir()
    iitd = _folders(tmp_path / "i", {"IITD": ".bmp"})
    (iitd / "IITD" / "0007").mkdir()
    with caplog.at_level("WARNING", logger="export.data.layouts"):
        assert len(load_dataset("generic", generic).identities) == 2
        assert len(load_dataset("iitd", iitd).identities) == 2
    assert f"1 identity folder(s) in {generic / 'print'} hold no png/jpg" in caplog.text
    assert "are left out: 0003" in caplog.text and "left out: 0007" in caplog.text
    assert f"1 identity folder(s) in {generic / 'vein'} have no print folder" in caplog.text
    assert "left out: 0009" in caplog.text


def test_every_tjppv_print_short_of_its_vein_is_named_at_once(tmp_path):
    """The first print without its vein image stopped the scan: one gap named per run."""
    root = _tjppv(tmp_path / "t", ids=2, samples=3)
    veins = root / "Palmvein_ROI_gray_128x128" / "session1"
    (veins / "00002.bmp").unlink()
    (veins / "00013.bmp").unlink()
    with pytest.raises(LayoutError) as e:
        load_dataset("tjppv", root)
    msg = str(e.value)
    assert "2 print(s) have no vein image" in msg and "delete those prints" in msg
    assert "0001_0002.jpg: session1/00002.bmp" in msg and "0002_0003.jpg: session1/00013.bmp" in msg


def test_every_generic_print_short_of_its_vein_is_named_at_once(tmp_path):
    root = _folders(tmp_path / "g", {"print": ".png", "vein": ".png"}, ids=2, samples=3)
    (root / "vein" / "0001" / "2.png").unlink()
    (root / "vein" / "0002" / "3.png").unlink()
    with pytest.raises(LayoutError) as e:
        load_dataset("generic", root)
    msg = str(e.value)
    assert "2 print(s) in" in msg and "have no vein image of the same name" in msg
    assert "(0001/2.png, 0002/3.png)" in msg and "delete those prints" in msg


def test_a_jpeg_cut_short_is_named_not_trained_on_with_grey_rows(tmp_path):
    """OpenCV decodes a truncated JPEG without an error, filling the missing rows with grey:
    a download cut short trained as a capture."""
    root = tmp_path / "c"
    for band in ("casia_700", "casia_460", "casia_850"):
        d = root / "Casia_M" / band
        d.mkdir(parents=True)
        for i in (1, 2):
            for j in (1, 2):
                noise = np.random.default_rng(10 * i + j).integers(0, 255, (64, 64), np.uint8)
                cv2.imwrite(str(d / f"{i:03d}_{j:02d}.jpg"), noise)
    assert len(load_dataset("casiam", root)) == 4  # complete files load
    cut = root / "Casia_M" / "casia_850" / "002_01.jpg"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    assert cv2.imread(str(cut)) is not None  # what made it slip through
    with pytest.raises(LayoutError, match=r"casia_850/002_01\.jpg\): an empty or cut-short"):
        load_dataset("casiam", root)


@pytest.mark.parametrize(
    ("ds", "make", "extra", "where", "said"),
    [
        (
            "casiam",
            _casiam,
            ["Casia_M/casia_700/001_03.webp", "Casia_M/casia_700/002_03.gif"],
            "Casia_M/casia_700",
            "2 image file(s) in {where} are not named III_SS.jpg and are left out: "
            "001_03.webp, 002_03.gif",
        ),
        (
            "tjppv",
            _tjppv,
            ["Palmvein_ROI_gray_128x128/session1/00003.webp"],
            "Palmvein_ROI_gray_128x128",
            "data set 'tjppv': 1 image file(s) in {where} are not bmp and are left out: "
            "session1/00003.webp",
        ),
        (
            "iitd",
            lambda r: _folders(r, {"IITD": ".bmp"}),
            ["IITD/0001/3.webp", "IITD/0002/3.gif"],
            "IITD",
            "data set 'iitd': 2 image file(s) in {where} are not png/jpg/jpeg/bmp/tif/tiff and "
            "are left out: 0001/3.webp, 0002/3.gif",
        ),
        (
            "generic",
            lambda r: _folders(r, {"print": ".png", "vein": ".png"}),
            ["print/0001/3.webp", "vein/0002/3.gif"],
            ".",
            "data set 'generic': 2 image file(s) in {where} are not png/jpg/jpeg/bmp/tif/tiff "
            "and are left out: print/0001/3.webp, vein/0002/3.gif",
        ),
    ],
)
def test_images_of_a_kind_the_layout_does_not_take_are_named(
    tmp_path, caplog, ds, make, extra, where, said
):
    """A capture saved as .webp or .gif was left out without a word: the set trained on fewer
    captures than the folder held, and nothing said which."""
    root = make(tmp_path / ds)
    n = len(load_dataset(ds, root))
    for name in extra:
        (root / name).write_bytes(b"GIF89a" if name.endswith(".gif") else b"RIFF\0\0\0\0WEBP")
    caplog.set_level(logging.WARNING, logger="export.data.layouts")
    assert len(load_dataset(ds, root)) == n
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [said.format(where=root / where if where != "." else root)]
