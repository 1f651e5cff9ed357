"""Every layout writes exactly the real sets' file names, and the loaders read them back."""

import subprocess
import sys

import cv2
import pytest

from export.data.layouts import scan
from export.synth import write_dataset
from export.synth.layouts import LAYOUTS, expected_files

# a few names written out by hand from docs/training.md's layout table (identity 3, sample 4;
# tjppv sample 12)
KNOWN = {
    "polyu": ["MS_PolyU/Red_ind/0003_0004.jpg", "MS_PolyU/NIR_ind/0003_0004.jpg"],
    "casiam": ["Casia_M/casia_700/003_04.jpg", "Casia_M/casia_850/003_04.jpg"],
    "tjppv": [
        "Tongji_jpg/0003_0004.jpg",
        "Palmvein_ROI_gray_128x128/session1/00024.bmp",
        "Tongji_jpg/0002_0012.jpg",
        "Palmvein_ROI_gray_128x128/session2/00012.bmp",
    ],
    "iitd": ["IITD/0003/003_4.bmp"],
    "generic": ["print/0003/04.png", "vein/0003/04.png"],
}
FILES_PER_CAPTURE = {"polyu": 4, "casiam": 3, "tjppv": 2, "iitd": 1, "generic": 2}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_writes_exactly_the_expected_files_and_loads_back(tmp_path, layout):
    ids, samples = 3, (12 if layout == "tjppv" else 4)
    root = write_dataset(layout, tmp_path, ids, samples, "medium", seed=1)
    written = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert written == sorted([*expected_files(layout, ids, samples), "synth.json"])
    assert len(written) - 1 == ids * samples * FILES_PER_CAPTURE[layout]
    assert set(KNOWN[layout]) <= set(written)
    img = cv2.imread(str(root / KNOWN[layout][0]), cv2.IMREAD_UNCHANGED)
    assert img.shape == (128, 128)
    records = scan(layout, root)
    assert len(records) == ids * samples
    assert len({r.identity for r in records}) == ids
    if layout != "iitd":
        assert all(r.vein_file is not None and r.vein_file.is_file() for r in records)


def test_iitd_file_names_keep_the_subject_number():
    # the real set holds 230 subjects' two hands as 460 identities
    assert "IITD/0231/001_2.bmp" in expected_files("iitd", 231, 2)


def test_tjppv_refuses_more_samples_than_two_sessions(tmp_path):
    with pytest.raises(ValueError, match="at most 20 samples"):
        write_dataset("tjppv", tmp_path, 1, 21, "medium", seed=0)


def test_cli_writes_a_set(tmp_path):
    out = tmp_path / "set"
    cmd = [sys.executable, "-m", "export.cli", "synth", "--layout", "casiam", "--ids", "2"]
    cmd += ["--samples", "3", "--level", "easy", "--out", str(out), "--workers", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (out / "Casia_M/casia_460/002_03.jpg").is_file()
    assert len(scan("casiam", out)) == 6
    bad = subprocess.run([*cmd[:-4], "--level", "extreme"], capture_output=True, text=True)
    assert bad.returncode != 0 and "extreme" in bad.stderr


def test_a_set_written_over_an_earlier_one_holds_the_new_set_only(tmp_path):
    """Written over a 4×4 set, a 3×3 one left the earlier identity 4 and every sample 4 in
    place (of the earlier seed: another hand under the same identity), and loaded as 16."""
    write_dataset("casiam", tmp_path, 4, 4, "easy", seed=0)
    write_dataset("casiam", tmp_path, 3, 3, "easy", seed=1)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted([*expected_files("casiam", 3, 3), "synth.json"])
    write_dataset("generic", tmp_path, 2, 2, "easy", seed=1)  # another layout: the old one goes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["print", "synth.json", "vein"]


def test_a_folder_with_other_files_is_refused_before_anything_is_deleted(tmp_path, capsys):
    from export.cli import main

    write_dataset("generic", tmp_path, 2, 2, "easy", seed=0)
    (tmp_path / "print" / "0001" / "mine.png").write_bytes(b"x")
    argv = ["synth", "--layout", "generic", "--ids", "1", "--samples", "2", "--workers", "1"]
    with pytest.raises(SystemExit) as e:
        main([*argv, "--out", str(tmp_path)])
    assert "holds files that no synthetic set written there had" in str(e.value)
    assert "mine.png" in str(e.value) and "pass an empty or new --out" in str(e.value)
    assert len(list(tmp_path.rglob("*.png"))) == 9 and (tmp_path / "synth.json").is_file()
    with pytest.raises(SystemExit, match="synth: layout tjppv holds at most 20 samples"):
        main(["synth", "--layout", "tjppv", "--samples", "21", "--out", str(tmp_path / "t")])
