"""The bundle: the one artefact that crosses from the workstation to the device.

A directory (or a ``.tar`` of one) holding ``manifest.json``, one model file per modality, format
and precision, and the identity centroids, described by the manifest (:mod:`agent.manifest`).

Loading is deliberately strict: every file's size and the sha256 of every file that will be used
are checked before anything is used, a configured public key makes the Ed25519 signature over
``manifest.json`` mandatory, and an unknown format version or bit order is refused rather than
guessed at. A device that ran a model with the wrong hash, bit order or normalisation would
make wrong decisions silently.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
import weakref
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent import codes
from agent.manifest import FMR_KEYS, BundleError, Manifest, ModelEntry
from agent.preprocess import PreprocessSpec

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"  # base64 of the raw Ed25519 signature over manifest.json's bytes


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_public_key(key: str | Path | bytes) -> Any:
    """An Ed25519 public key from a PEM file, or from raw/base64 32-byte key material.

    Anything else (the private .pem given for the .pub, another kind of key, a file that is
    not there) is a :class:`BundleError` naming the key: the device refuses the bundle either
    way, and the message says which file to give instead.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        data = key if isinstance(key, bytes) else Path(key).read_bytes()
        if b"-----BEGIN" in data:
            pub = serialization.load_pem_public_key(data)
        else:
            raw = data if len(data) == 32 else base64.b64decode(data.strip(), validate=True)
            pub = Ed25519PublicKey.from_public_bytes(raw)
    except (OSError, ValueError, TypeError) as exc:
        name = "the configured key" if isinstance(key, bytes) else str(key)
        raise BundleError(
            f"public key {name}: not a readable Ed25519 public key ({exc}); give the .pub "
            "that palm-export keygen wrote next to the signing .pem"
        ) from exc
    if not isinstance(pub, Ed25519PublicKey):
        raise BundleError(
            f"public key {key!s}: not an Ed25519 key (make one with palm-export keygen)"
        )
    return pub


def _check_signature(
    root: Path, manifest_bytes: bytes, public_key: str | Path | bytes | None
) -> bool:
    """Whether ``manifest_bytes`` (the manifest as read once: the bytes checked are the bytes
    parsed) carry a valid signature; refused when a key is configured and they do not."""
    sig_path = root / SIGNATURE
    if public_key is None:
        if sig_path.exists():
            logger.warning("bundle=%s signature=present public_key=none: not verified", root)
        return False
    if not sig_path.exists():
        raise BundleError(
            f"{sig_path}: missing; this device has a public key configured and refuses "
            "unsigned bundles (export with --sign-key)"
        )
    from cryptography.exceptions import InvalidSignature

    pub = load_public_key(public_key)
    try:
        signature = base64.b64decode(sig_path.read_bytes().strip(), validate=True)
        pub.verify(signature, manifest_bytes)
    except (InvalidSignature, ValueError) as exc:
        raise BundleError(
            f"{sig_path}: the Ed25519 signature over {MANIFEST} does not verify with the "
            "configured public key; the bundle was altered or signed with another key"
        ) from exc
    return True


def verify_files(root: Path, manifest: Manifest, only: tuple[str, str] | None = None) -> None:
    """Size of every file the manifest names, and the sha256 of each, or with ``only`` =
    (format, precision) of that form's models and the centroids: the first mismatch is an error.

    A device loads one form of the models; hashing all eight of a res18 bundle (215 MB) took
    0.23-0.46 s on a 2-core Xeon with SHA instructions, against 31-38 ms for the two in use,
    and a Pi 4 has neither those instructions nor a fast disk. A model that is not loaded
    cannot mislead a decision, and a reload checks what it loads.
    """
    hashed = {m.file for m in manifest.models if only in (None, (m.format, m.precision))}
    hashed.add(manifest.centroids.file)
    for entry in manifest.files():
        path = (root / entry.file).resolve()
        if root.resolve() not in path.parents:
            raise BundleError(f"manifest.json: file {entry.file!r} points outside the bundle")
        if not path.is_file():
            raise BundleError(f"{path}: listed in manifest.json but missing from the bundle")
        size = path.stat().st_size
        if size != entry.size:
            raise BundleError(f"{path}: size {size} bytes, manifest.json says {entry.size}")
        if entry.file not in hashed:
            continue
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise BundleError(
                f"{path}: sha256 {digest} differs from manifest.json's {entry.sha256}; "
                "the file was altered or belongs to another bundle"
            )


@dataclass
class Bundle:
    """A verified bundle: everything the device needs to hash, match and decide."""

    root: Path
    manifest: Manifest
    signed: bool
    centroid_codes: np.ndarray  # packed (n_ids, words), agent.codes bit order
    centroid_labels: np.ndarray

    @property
    def bits(self) -> int:
        return self.manifest.bits

    @property
    def bit_order(self) -> str:
        return self.manifest.bit_order

    @property
    def thresholds(self) -> dict[str, dict[str, float]]:
        return self.manifest.thresholds

    @property
    def parity(self) -> dict[str, Any]:
        return self.manifest.parity

    @property
    def evaluation(self) -> dict[str, Any]:
        return self.manifest.evaluation

    def preprocess(self, modality: str) -> PreprocessSpec:
        if modality not in self.manifest.modalities:
            raise BundleError(
                f"bundle {self.root} has no {modality!r} modality "
                f"(it has {sorted(self.manifest.modalities)})"
            )
        return PreprocessSpec.from_dict(self.manifest.modalities[modality].preprocess)

    def models(self, modality: str | None = None) -> list[ModelEntry]:
        return [m for m in self.manifest.models if modality in (None, m.modality)]

    def model(self, modality: str, fmt: str, precision: str) -> ModelEntry:
        for m in self.manifest.models:
            if (m.modality, m.format, m.precision) == (modality, fmt, precision):
                return m
        have = [f"{m.modality}/{m.format}/{m.precision}" for m in self.manifest.models]
        raise BundleError(
            f"bundle {self.root} has no {modality}/{fmt}/{precision} model; it has {have}"
        )

    def model_path(self, modality: str, fmt: str, precision: str) -> Path:
        return self.root / self.model(modality, fmt, precision).file

    def threshold(self, mode: str, at: str = "0.001") -> float:
        """The accept threshold (accept when distance <= it) for ``mode`` at an FMR or "eer"."""
        row = self.thresholds.get(mode)
        if row is None or at not in row:
            raise BundleError(
                f"manifest.json: thresholds.{mode}.{at} is missing "
                f"(modes: {sorted(self.thresholds)}, points: {(*FMR_KEYS, 'eer')})"
            )
        return row[at]


def _extract(tar_path: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(tar_path) as tar:
            tar.extractall(dest, filter="data")  # refuses absolute paths, links out, devices
            # compressed, the offset counts the data unpacked, and a cut is the decompressor's
            ended = tar.offset if isinstance(tar.fileobj, io.BufferedReader) else None
        size = tar_path.stat().st_size
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:  # EOFError: a cut .tar.gz
        # one line: tarfile lists each compression it tried on a line of its own
        why = "; ".join(p.strip(" -:") for p in str(exc).splitlines() if p.strip(" -:"))
        raise BundleError(f"{tar_path}: not a readable bundle archive: {why}") from exc
    if ended is not None and not _zero_blocks(tar_path, ended, size):
        # a tar ends in zero blocks; at a header cut short or damaged, tarfile stops as if at
        # the end, and the members after it were missing without a word about why
        raise BundleError(
            f"{tar_path}: the archive is cut short or damaged: its entries stop at byte "
            f"{ended} of {size}; copy it again, and compare its size and sha256 with the "
            "exported one"
        )
    found = list(dest.rglob(MANIFEST))
    if len(found) != 1:
        raise BundleError(f"{tar_path}: expected exactly one {MANIFEST}, found {len(found)}")
    return found[0].parent


def _zero_blocks(tar_path: Path, offset: int, size: int) -> bool:
    """Whether a plain tar holds only its end-of-archive zero blocks (512 bytes at least) after
    the last entry tarfile read."""
    if size - offset < 512:
        return False
    with open(tar_path, "rb") as f:
        f.seek(offset)
        for chunk in iter(lambda: f.read(1 << 16), b""):
            if chunk.count(0) != len(chunk):
                return False
    return True


def load_centroids(path: Path, bits: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            packed, labels = z["codes"], z["labels"]
    except (OSError, KeyError, ValueError) as exc:
        raise BundleError(f"{path}: not a centroids file with 'codes' and 'labels': {exc}") from exc
    if (
        packed.dtype != codes.word_dtype(bits)
        or packed.ndim != 2
        or (packed.shape[1] != codes.n_words(bits))
    ):
        raise BundleError(
            f"{path}: codes are {packed.dtype} {packed.shape}, expected "
            f"{codes.word_dtype(bits)} (n, {codes.n_words(bits)}) for {bits} bits"
        )
    if labels.shape != (packed.shape[0],):
        raise BundleError(f"{path}: {labels.shape[0]} labels for {packed.shape[0]} centroids")
    return packed, labels


def load_bundle(
    path: str | Path,
    public_key: str | Path | bytes | None = None,
    extract_to: str | Path | None = None,
    allow_degraded: bool = False,
    only: tuple[str, str] | None = None,
) -> Bundle:
    """Open and verify a bundle directory or ``.tar``; raises :class:`BundleError` if unusable.

    With ``public_key`` set the bundle must carry a valid signature; without it the hashes are
    still checked (they catch corruption, the signature catches substitution); ``only`` =
    (format, precision) hashes only the models of that form (see :func:`verify_files`). A
    bundle whose export failed the parity gate is refused unless it was exported with
    ``--allow-degraded`` or the caller passes ``allow_degraded`` (the exporter, reading back
    what it wrote).
    """
    path = Path(path)
    try:
        if not path.exists():
            raise BundleError(f"{path}: no such bundle directory or archive")
        if path.is_dir():
            return _verified(path, public_key, allow_degraded, only)
        if path.name == MANIFEST:  # was "not a readable bundle archive", over five lines
            raise BundleError(f"{path}: give the bundle's folder, {path.parent}, not its manifest")
    except OSError as exc:
        raise BundleError(_unreadable(exc)) from None
    # an archive is unpacked into a folder of its own, removed with the bundle (a reload or a
    # change of mode loads it again: each left a copy of the models behind)
    owned = None if extract_to is not None else Path(tempfile.mkdtemp(prefix="palm-bundle-"))
    try:
        bundle = _verified(
            _extract(path, owned or Path(extract_to)), public_key, allow_degraded, only
        )
    except BaseException:
        if owned is not None:
            shutil.rmtree(owned, ignore_errors=True)
        raise
    if owned is not None:
        weakref.finalize(bundle, shutil.rmtree, owned, ignore_errors=True)
    return bundle


def _unreadable(exc: OSError) -> str:
    """A bundle folder's file this process cannot read (copied in with mode 0600, say): it
    stopped a start with a bare PermissionError traceback, exit 1, where a bundle error is one
    line and exit 2."""
    what = f"{exc.filename}: cannot be read by this process (uid {os.geteuid()}): {exc.strerror}"
    if isinstance(exc, PermissionError):
        what += (
            "; the service's user must be able to read the whole bundle: chmod -R a+rX on its "
            "folder, or deploy it as one .tar (docs/deploy-pi.md#the-bundle)"
        )
    return what


def _verified(
    root: Path,
    public_key: str | Path | bytes | None,
    allow_degraded: bool,
    only: tuple[str, str] | None,
) -> Bundle:
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path}: missing; is {root} a bundle?")
    manifest_bytes = manifest_path.read_bytes()
    signed = _check_signature(root, manifest_bytes, public_key)
    try:
        raw = json.loads(manifest_bytes)
    except ValueError as exc:
        raise BundleError(f"{manifest_path}: not valid JSON: {exc}") from exc
    manifest = Manifest.from_dict(raw)
    verify_files(root, manifest, only)
    gate = manifest.parity.get("gate", {})
    if gate.get("passed") is False and not (allow_degraded or gate.get("allow_degraded")):
        raise BundleError(
            f"{manifest_path}: this bundle failed the export parity gate "
            f"({'; '.join(gate.get('failures', [])) or 'see parity'}); re-export it, or export "
            "with --allow-degraded to deploy it knowingly"
        )
    if gate.get("passed") is False:
        _warn_degraded(root, manifest, only)
    for name in manifest.modalities:
        try:
            PreprocessSpec.from_dict(manifest.modalities[name].preprocess)
        except (TypeError, ValueError) as exc:
            raise BundleError(f"manifest.json: modalities.{name}.preprocess: {exc}") from exc
    packed, labels = load_centroids(root / manifest.centroids.file, manifest.bits)
    logger.info(
        "bundle=%s loaded bits=%d models=%d identities=%d signed=%s",
        root,
        manifest.bits,
        len(manifest.models),
        len(labels),
        signed,
    )
    return Bundle(root, manifest, signed, packed, labels)


def _warn_degraded(root: Path, manifest: Manifest, only: tuple[str, str] | None) -> None:
    """A bundle shipped with --allow-degraded runs, but the log says so at every load, and
    which of the models in use the parity gate failed: their codes differ from the trained
    model's more than the export allowed."""
    rows = manifest.parity.get("files", [])
    in_use = [r for r in rows if only in (None, (r.get("format"), r.get("precision")))]
    failed = [str(r.get("file")) for r in in_use if r.get("passed") is False]
    logger.warning(
        "bundle=%s parity_gate=failed allow_degraded=true models_failing_in_use=%s: "
        "it was exported with --allow-degraded; %s",
        root,
        ",".join(failed) or "none",
        "decisions may differ from the trained model's; re-export it or run another form"
        if failed
        else "the models this device runs passed",
    )
