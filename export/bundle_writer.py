"""Writing a bundle: files with their sha256 and size, manifest.json, signature, tar, keys.

The manifest is built from ``agent.manifest.Manifest`` (the device's own schema) and read back
through ``agent.bundle.load_bundle`` before the exporter reports success, so a bundle the device
would refuse is never announced as written.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from agent import codes
from agent.bundle import MANIFEST, SIGNATURE, sha256_file
from agent.manifest import BundleError, FileEntry, Manifest
from export.text import first_few

logger = logging.getLogger(__name__)

CENTROIDS = "centroids.npz"


STAGING = (".export-", ".partial")  # prefix, suffix of the folder a bundle is written in


@contextlib.contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A new folder in ``out`` to write a bundle into, removed when the block ends, however it
    ends. Files written straight into ``out`` by an export stopped part way looked like a bundle
    that lacked files; in ``out`` itself, :func:`publish` needs only renames on one file system.
    Folders left by an export that was killed (no block end ran) are removed first."""
    prefix, suffix = STAGING
    leftovers = sorted(p for p in out.glob(f"{prefix}*{suffix}") if p.is_dir())
    for old in leftovers:
        shutil.rmtree(old)
    if leftovers:
        logger.info(
            "export removed leftover staging folders=%d out=%s (an export stopped part way): %s",
            len(leftovers), out, first_few(p.name for p in leftovers),
        )  # fmt: skip
    stage = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=out))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def publish(stage: Path, out: Path) -> None:
    """Move every file of the bundle staged in ``stage`` into ``out``, manifest.json last (its
    signature just before it): until the manifest is in place, ``out`` is no bundle at all."""
    last = [SIGNATURE, MANIFEST]
    names = sorted(p.name for p in stage.iterdir() if p.is_file() and p.name not in last)
    for name in [*names, *last]:
        if (stage / name).is_file():
            os.replace(stage / name, out / name)


def file_entry(root: Path, name: str) -> FileEntry:
    path = root / name
    return FileEntry(name, sha256_file(path), path.stat().st_size)


def write_centroids(root: Path, centroids: np.ndarray, labels: Any) -> FileEntry:
    """±1 (n_ids, K) centroids -> packed codes in the device's bit order, plus their labels."""
    c = np.asarray(centroids)
    packed = codes.pack(c, zero_point=0.0)
    lab = np.asarray(labels)
    if lab.dtype.kind not in "iu":
        lab = lab.astype(str)  # never object arrays: the device loads without pickle
    with open(root / CENTROIDS, "wb") as f:
        np.savez(f, codes=packed, labels=lab)
    return file_entry(root, CENTROIDS)


def write_manifest(root: Path, manifest: Manifest) -> Path:
    path = root / MANIFEST
    text = json.dumps(manifest.to_dict(), indent=2, sort_keys=True, default=_plain)
    path.write_text(text + "\n", encoding="utf-8")
    stale = root / SIGNATURE
    if stale.exists():  # a signature over an older manifest would be refused anyway
        stale.unlink()
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"manifest value of type {type(value).__name__} is not JSON")


def load_private_key(path: str | Path) -> Any:
    """The Ed25519 private key in ``path``; a file that is missing or holds something else (the
    .pub half, another kind of key, a key with a password) raises BundleError saying so."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    make = "make one with `palm-export keygen --out PREFIX` and pass --sign-key PREFIX.pem"
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BundleError(f"signing key {path}: {exc.strerror}; {make}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        if b"PUBLIC KEY-----" in data:
            what = "a public key; --sign-key takes the private half of the pair (PREFIX.pem)"
        else:
            what = f"no unencrypted PEM private key; {make}"
        raise BundleError(f"signing key {path}: holds {what}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(
            f"signing key {path}: not an Ed25519 private key ({type(key).__name__.lstrip('_')}); "
            f"{make}"
        )
    return key


def sign(root: Path, private_key: str | Path | Any) -> Path:
    """Ed25519 signature over manifest.json's exact bytes; the manifest pins every file's hash.
    ``private_key`` is a key file or a key :func:`load_private_key` returned."""
    named = isinstance(private_key, (str, Path))
    key = load_private_key(private_key) if named else private_key
    signature = key.sign((root / MANIFEST).read_bytes())
    path = root / SIGNATURE
    path.write_text(base64.b64encode(signature).decode("ascii") + "\n", encoding="ascii")
    logger.info("bundle=%s signed key=%s", root, private_key if named else "given")
    return path


def keygen(private_path: Path, public_path: Path) -> None:
    """A fresh Ed25519 key pair as PEM; the private key file is readable by its owner only."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    for p in (private_path, public_path):
        if p.exists():
            raise FileExistsError(
                f"{p} exists; refusing to overwrite a key: choose another --out prefix, or move "
                "the old pair away first (devices holding its .pub refuse bundles signed with "
                "a new key)"
            )
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def make_tar(root: Path, tar_path: Path) -> Path:
    """The bundle directory as one archive (members under the directory's name, sorted).

    Only the bundle goes in: manifest.json, its signature and the files the manifest lists. A
    folder also holding other files (an export into the training run's folder, beside best.pt
    and last.pt; a file of another tool) shipped them all to every device; they are left out,
    with a warning naming them."""
    manifest = Manifest.from_dict(json.loads((root / MANIFEST).read_text(encoding="utf-8")))
    names = {MANIFEST, *(e.file for e in manifest.files())}
    names |= {SIGNATURE} if (root / SIGNATURE).is_file() else set()
    others = sorted(p.name for p in root.iterdir() if p.is_file() and p.name not in names)
    if others:
        logger.warning(
            "%d file(s) in %s are not part of the bundle and are left out of %s: %s",
            len(others), root, tar_path, first_few(others),
        )  # fmt: skip

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    # written beside, then renamed: an archive cut short by Ctrl-C lacked its last members
    partial = tar_path.with_name(f".{tar_path.name}.partial")
    try:
        with tarfile.open(partial, "w") as tar:
            tar.add(root, arcname=root.name, recursive=False, filter=clean)
            for name in sorted(names):
                tar.add(root / name, arcname=f"{root.name}/{name}", filter=clean)
        os.replace(partial, tar_path)
    finally:
        partial.unlink(missing_ok=True)
    return tar_path
