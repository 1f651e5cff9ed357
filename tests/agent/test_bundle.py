"""load_bundle refuses every bundle it must not use, and exposes what a good one holds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from agent import codes
from agent.bundle import MANIFEST, SIGNATURE, load_bundle
from agent.manifest import FORMAT_VERSION, BundleError, Manifest, Modality, ModelEntry
from agent.preprocess import DEFAULT_SPEC
from export.bundle_writer import file_entry, keygen, make_tar, sign, write_centroids, write_manifest

BITS = 32


def _write(root: Path) -> Manifest:
    """A small bundle; model files are opaque bytes here (the loader only hashes them)."""
    root.mkdir()
    rng = np.random.default_rng(0)
    models = []
    for modality in ("print", "vein"):
        name = f"{modality}.fp32.onnx"
        (root / name).write_bytes(rng.bytes(3000))
        e = file_entry(root, name)
        models.append(ModelEntry(modality, "onnx", "fp32", e.file, e.sha256, e.size))
    centroids = np.where(rng.random((6, BITS)) > 0.5, 1.0, -1.0)
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        bits=BITS,
        bit_order=codes.BIT_ORDER,
        input_size=128,
        modalities={m: Modality(DEFAULT_SPEC.to_dict(), ["grey"] * 3) for m in ("print", "vein")},
        models=models,
        centroids=write_centroids(root, centroids, [f"id{i}" for i in range(6)]),
        thresholds={"print": {"eer": 9.0, "0.01": 7.0, "0.001": 5.0, "0.0001": 3.0}},
    )
    write_manifest(root, manifest)
    return manifest


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    _write(tmp_path / "bundle")
    return tmp_path / "bundle"


def test_good_bundle_exposes_its_contents(bundle_dir: Path):
    b = load_bundle(bundle_dir)
    assert b.bits == BITS and b.bit_order == codes.BIT_ORDER
    assert b.model_path("vein", "onnx", "fp32") == bundle_dir / "vein.fp32.onnx"
    assert b.preprocess("print") == DEFAULT_SPEC
    assert b.threshold("print", "0.001") == 5.0 and b.threshold("print", "eer") == 9.0
    assert b.centroid_codes.dtype == np.uint32 and b.centroid_codes.shape == (6, 1)
    assert list(b.centroid_labels) == [f"id{i}" for i in range(6)]
    assert not b.signed
    with pytest.raises(BundleError, match="no print/tflite/int8 model"):
        b.model_path("print", "tflite", "int8")


def test_centroids_round_trip_in_device_bit_order(tmp_path: Path):
    c = np.where(np.random.default_rng(1).random((5, BITS)) > 0.5, 1.0, -1.0)
    write_centroids(tmp_path, c, np.arange(5))
    with np.load(tmp_path / "centroids.npz") as z:
        assert np.array_equal(codes.unpack(z["codes"], BITS), c > 0)


def test_tampered_model_file_is_refused(bundle_dir: Path):
    data = bytearray((bundle_dir / "print.fp32.onnx").read_bytes())
    data[100] ^= 1
    (bundle_dir / "print.fp32.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"print\.fp32\.onnx: sha256"):
        load_bundle(bundle_dir)


def test_only_the_models_in_use_are_hashed_but_every_size_is_checked(bundle_dir: Path):
    """A device loads one form of the models; hashing the rest at every start costs seconds on
    a Pi. A model it will not load may differ, but not in size, and never the centroids."""
    data = bytearray((bundle_dir / "print.fp32.onnx").read_bytes())
    data[100] ^= 1
    (bundle_dir / "print.fp32.onnx").write_bytes(bytes(data))
    assert load_bundle(bundle_dir, only=("tflite", "int8")).bits == BITS  # not in use
    for only in (("onnx", "fp32"), None):
        with pytest.raises(BundleError, match=r"print\.fp32\.onnx: sha256"):
            load_bundle(bundle_dir, only=only)
    with open(bundle_dir / "vein.fp32.onnx", "ab") as f:
        f.write(b"x")
    with pytest.raises(BundleError, match=r"vein\.fp32\.onnx: size 3001"):
        load_bundle(bundle_dir, only=("tflite", "int8"))
    _write(bundle_dir.parent / "again")
    cents = bundle_dir.parent / "again" / "centroids.npz"
    data = bytearray(cents.read_bytes())
    data[-30] ^= 1
    cents.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"centroids\.npz: sha256"):
        load_bundle(bundle_dir.parent / "again", only=("tflite", "int8"))


def test_truncated_or_missing_file_is_refused(bundle_dir: Path):
    with open(bundle_dir / "vein.fp32.onnx", "ab") as f:
        f.write(b"x")
    with pytest.raises(BundleError, match=r"vein\.fp32\.onnx: size 3001"):
        load_bundle(bundle_dir)
    (bundle_dir / "centroids.npz").unlink()
    (bundle_dir / "vein.fp32.onnx").unlink()
    with pytest.raises(BundleError, match="missing from the bundle"):
        load_bundle(bundle_dir)


def _edit(bundle_dir: Path, edit) -> None:
    d = json.loads((bundle_dir / MANIFEST).read_text())
    edit(d)
    (bundle_dir / MANIFEST).write_text(json.dumps(d))


def test_tampered_manifest_hash_is_refused(bundle_dir: Path):
    _edit(bundle_dir, lambda d: d["models"][0].update(sha256="0" * 64))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(format_version=FORMAT_VERSION + 1), "format_version 2 is not supp"),
        (lambda d: d.update(bit_order="msb0"), "bit_order 'msb0' differs"),
        (lambda d: d.update(bits=33), "bits: code length 33"),
        (lambda d: d.pop("centroids"), r"manifest\.centroids is missing"),
        (lambda d: d["models"][1].update(size="big"), r"models\[1\]\.size must be int"),
        (lambda d: d["models"][0].update(format="pt"), r"models\[0\]\.format 'pt' unknown"),
        (lambda d: d["models"][0].update(file="../x"), "outside the bundle"),
        (lambda d: d["modalities"]["vein"]["preprocess"].update(mean=[0.5]), "vein.preprocess"),
        (lambda d: d["thresholds"]["print"].update(eer=1e9), r"print\.eer is 1000000000\.0 bits"),
        (lambda d: d["thresholds"]["print"].update({"0.01": float("nan")}), r"0\.01 is nan"),
        (lambda d: d["thresholds"]["print"].update({"0.001": -2}), r"lies in \[-1, 32\]"),
        (lambda d: d["thresholds"]["print"].update({"0.001": "5 bits"}), "must be a number"),
        # these stopped a start with an AttributeError or TypeError traceback
        (lambda d: d.update(parity=["passed"]), r"manifest\.parity must be an object, got list"),
        (lambda d: d.update(parity={"gate": "passed"}), r"parity\.gate must be an object"),
        (
            lambda d: d.update(parity={"gate": {"passed": False, "failures": [1]}}),
            r"parity\.gate\.failures must be a list of strings",
        ),
        (lambda d: d.update(parity={"files": "all"}), r"parity\.files must be a list of objects"),
        (
            lambda d: d["models"][0].update(quantization=[1, 2]),
            r"models\[0\]\.quantization must be an object, got list",
        ),
    ],
)
def test_bad_manifest_fields_are_named(bundle_dir: Path, edit, message: str):
    _edit(bundle_dir, edit)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_dir)


def test_signature_is_required_and_checked_when_a_key_is_configured(tmp_path: Path):
    root = tmp_path / "bundle"
    _write(root)
    keygen(tmp_path / "k.pem", tmp_path / "k.pub")
    with pytest.raises(BundleError, match="refuses unsigned bundles"):
        load_bundle(root, public_key=tmp_path / "k.pub")
    sign(root, tmp_path / "k.pem")
    assert load_bundle(root, public_key=tmp_path / "k.pub").signed
    # another key's signature is refused
    keygen(tmp_path / "other.pem", tmp_path / "other.pub")
    with pytest.raises(BundleError, match="does not verify"):
        load_bundle(root, public_key=tmp_path / "other.pub")
    # a manifest edit that keeps valid JSON and valid hashes still breaks the signature
    _edit(root, lambda d: d["thresholds"]["print"].update({"0.001": 30.0}))
    with pytest.raises(BundleError, match="does not verify"):
        load_bundle(root, public_key=tmp_path / "k.pub")
    # a corrupted signature file is refused, not crashed on
    sign(root, tmp_path / "k.pem")
    (root / SIGNATURE).write_text("not base64 !!\n")
    with pytest.raises(BundleError, match="does not verify"):
        load_bundle(root, public_key=tmp_path / "k.pub")


def test_the_signed_manifest_is_the_manifest_used(tmp_path: Path, monkeypatch):
    """The manifest is read once: a copy swapped in between the signature check and the
    parsing (by whoever can write the bundle folder) would be used unchecked."""
    root = tmp_path / "bundle"
    _write(root)
    keygen(tmp_path / "k.pem", tmp_path / "k.pub")
    sign(root, tmp_path / "k.pem")
    signed = (root / MANIFEST).read_bytes()
    forged = json.loads(signed)
    forged["thresholds"]["print"]["0.001"] = 30.0
    reads = []
    read_bytes = Path.read_bytes

    def swap_after_first_read(path: Path) -> bytes:
        data = read_bytes(path)
        if path.name == MANIFEST:
            reads.append(path)
            path.write_text(json.dumps(forged))  # too late for this load, if it reads once
        return data

    monkeypatch.setattr(Path, "read_bytes", swap_after_first_read)
    b = load_bundle(root, public_key=tmp_path / "k.pub")
    assert len(reads) == 1 and b.signed
    assert b.manifest.thresholds["print"]["0.001"] != 30.0


def test_a_tar_bundle_leaves_no_copy_behind(tmp_path: Path, monkeypatch):
    """Each load of an archive unpacks it (a start, a reload, a change of mode): the copy goes
    with the bundle, and with a refused archive at once."""
    import gc
    import tempfile

    root = tmp_path / "bundle"
    _write(root)
    tar = make_tar(root, tmp_path / "bundle.tar")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    copies = lambda: sorted((tmp_path / "tmp").glob("palm-bundle-*"))  # noqa: E731
    b = load_bundle(tar)
    assert copies() and (b.root / MANIFEST).is_file()  # in use: kept
    for _ in range(3):
        b = load_bundle(tar)  # the one before is dropped
    gc.collect()
    assert len(copies()) == 1
    del b
    gc.collect()
    assert copies() == []
    (root / "vein.fp32.onnx").write_bytes(b"\0" * 3000)
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(make_tar(root, tmp_path / "bad.tar"))
    assert copies() == []


def test_a_tar_holds_the_bundle_only_not_other_files_of_its_folder(tmp_path: Path, caplog):
    """An export into the training run's folder put best.pt, last.pt and any other file there
    into the archive that devices download."""
    import tarfile

    root = tmp_path / "bundle"
    _write(root)
    keygen(tmp_path / "k.pem", tmp_path / "k.pub")
    sign(root, tmp_path / "k.pem")
    (root / "best.pt").write_bytes(b"\0" * 100)
    (root / "notes.txt").write_text("x")
    with caplog.at_level("WARNING", logger="export.bundle_writer"):
        tar = make_tar(root, tmp_path / "bundle.tar")
    with tarfile.open(tar) as t:
        names = sorted(t.getnames())
    assert names == [
        "bundle",
        "bundle/centroids.npz",
        f"bundle/{MANIFEST}",
        f"bundle/{SIGNATURE}",
        "bundle/print.fp32.onnx",
        "bundle/vein.fp32.onnx",
    ]
    assert "2 file(s) in" in caplog.text and "left out of" in caplog.text
    assert "best.pt, notes.txt" in caplog.text
    assert load_bundle(tar, public_key=tmp_path / "k.pub", extract_to=tmp_path / "x").signed


def test_tar_bundle_loads_and_is_verified(tmp_path: Path):
    root = tmp_path / "bundle"
    _write(root)
    keygen(tmp_path / "k.pem", tmp_path / "k.pub")
    sign(root, tmp_path / "k.pem")
    tar = make_tar(root, tmp_path / "bundle.tar")
    b = load_bundle(tar, public_key=tmp_path / "k.pub", extract_to=tmp_path / "x")
    assert b.signed and b.root == tmp_path / "x" / "bundle"
    # a tar of a tampered directory is refused
    (root / "vein.fp32.onnx").write_bytes(b"\0" * 3000)
    shutil.rmtree(tmp_path / "x")
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(make_tar(root, tmp_path / "bad.tar"), extract_to=tmp_path / "x")
    (tmp_path / "junk.tar").write_bytes(b"junk")
    with pytest.raises(BundleError, match="not a readable bundle archive"):
        load_bundle(tmp_path / "junk.tar")


def test_a_tar_cut_short_or_damaged_says_so_in_one_line(tmp_path: Path):
    """A copy cut inside an entry's header (or a header damaged) ended the archive there for
    tarfile without a word: the device said "expected exactly one manifest.json, found 0", or
    named a model missing from the bundle. A cut .tar.gz was an EOFError traceback, and a
    file that is no archive a message over five lines."""
    import gzip
    import tarfile

    root = tmp_path / "bundle"
    _write(root)
    tar = make_tar(root, tmp_path / "bundle.tar")
    with tarfile.open(tar) as t:
        second = t.getmembers()[2].offset  # the header of the entry after the first file
    data = tar.read_bytes()
    for name, cut in (("cut.tar", data[: second + 100]), ("damaged.tar", bytearray(data))):
        if name == "damaged.tar":
            cut[second + 148 : second + 156] = b"XXXXXXXX"  # its header checksum
        (tmp_path / name).write_bytes(cut)
        with pytest.raises(BundleError, match="the archive is cut short or damaged") as e:
            load_bundle(tmp_path / name)
        assert f"stop at byte {second} of {len(cut)}" in str(e.value), e.value
    (tmp_path / "cut.tar.gz").write_bytes(gzip.compress(data)[:-100])
    with pytest.raises(BundleError, match="not a readable bundle archive: Compressed file ended"):
        load_bundle(tmp_path / "cut.tar.gz")
    (tmp_path / "empty.tar").write_bytes(b"")
    with pytest.raises(BundleError, match="not a readable bundle archive") as e:
        load_bundle(tmp_path / "empty.tar")
    assert len(str(e.value).splitlines()) == 1, e.value
    (tmp_path / "whole.tar.gz").write_bytes(gzip.compress(data))
    assert load_bundle(tmp_path / "whole.tar.gz").bits == BITS


def test_a_bundle_path_naming_its_manifest_says_to_give_the_folder(bundle_dir: Path):
    """bundle.path set to the manifest was tried as an archive: five lines of tarfile's."""
    with pytest.raises(BundleError, match=r"give the bundle's folder, .*, not its manifest$"):
        load_bundle(bundle_dir / MANIFEST)


def test_verify_and_inspect_say_in_one_line_why_a_bundle_is_refused(tmp_path: Path, capsys):
    """A tampered bundle, another key, or the private .pem given for the .pub: one line naming
    what is wrong and exit 2, as for a bad data set or checkpoint, not a traceback."""
    from export.cli import main

    root = tmp_path / "bundle"
    _write(root)
    keygen(tmp_path / "k.pem", tmp_path / "k.pub")
    keygen(tmp_path / "other.pem", tmp_path / "other.pub")
    sign(root, tmp_path / "k.pem")
    assert main(["verify", str(root), "--public-key", str(tmp_path / "k.pub")]) == 0
    assert main(["verify", str(root), "--public-key", str(tmp_path / "other.pub")]) == 2
    assert "does not verify" in capsys.readouterr().err
    assert main(["inspect", str(root), "--public-key", str(tmp_path / "k.pem")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: public key") and ".pub" in err and len(err.splitlines()) == 1
    (root / "vein.fp32.onnx").write_bytes(b"\0" * 3000)
    assert main(["verify", str(root)]) == 2
    assert "vein.fp32.onnx: sha256" in capsys.readouterr().err
    with pytest.raises(BundleError, match="not a readable Ed25519 public key"):
        load_bundle(root, public_key=b"too short")


def test_a_degraded_bundle_loads_only_when_allowed_and_says_so(bundle_dir: Path, caplog):
    rows = [
        {"file": "print.fp32.onnx", "format": "onnx", "precision": "fp32", "passed": True},
        {"file": "print.int8.onnx", "format": "onnx", "precision": "int8", "passed": False},
    ]
    gate = {"passed": False, "failures": ["print.int8.onnx: bit agreement 90% < 99%"]}
    _edit(bundle_dir, lambda d: d.update(parity={"gate": gate, "files": rows}))
    with pytest.raises(BundleError, match="failed the export parity gate"):
        load_bundle(bundle_dir)
    _edit(bundle_dir, lambda d: d["parity"]["gate"].update(allow_degraded=True))
    with caplog.at_level("WARNING", logger="agent.bundle"):
        load_bundle(bundle_dir, only=("onnx", "int8"))
    assert "models_failing_in_use=print.int8.onnx" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="agent.bundle"):
        load_bundle(bundle_dir, only=("onnx", "fp32"))
    assert "parity_gate=failed" in caplog.text and "models_failing_in_use=none" in caplog.text
