"""Template protection: a keyed bit permutation plus XOR mask, derived from a per-device key.

Why this transform: it preserves every Hamming distance exactly, so matching on protected codes
gives the same decisions as on raw codes, yet the stored bits depend on a secret. Templates
copied from one device are unlinkable to the same palm on another device (different key, so the
two protected versions of one code are ~K/2 bits apart), and a leaked database is renewed by
``rekey``: a new key re-protects every template without re-enrolling anyone.

Protected bit j = raw bit perm[j] XOR mask bit j. The permutation and mask come from HKDF-SHA256
over the 32-byte key, with the code length in the ``info`` string so each K has its own transform.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent import codes
from agent.disk import fsync_folder

logger = logging.getLogger(__name__)

KEY_BYTES = 32
INFO_PREFIX = b"palm-cohash/protect/v1/"


class KeyFileError(RuntimeError):
    """The device key file is missing, malformed or readable by others."""


class DeviceKey:
    """The device secret. Only its derived transforms and a non-secret id ever leave this object."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_BYTES:
            raise KeyFileError(f"a device key is {KEY_BYTES} bytes, got {len(secret)}")
        self._secret = bytes(secret)

    @classmethod
    def generate(cls) -> DeviceKey:
        return cls(secrets.token_bytes(KEY_BYTES))

    @property
    def key_id(self) -> str:
        """A fingerprint that names the key (stored beside templates) without revealing it."""
        return hmac.new(self._secret, b"palm-cohash key id", hashlib.sha256).hexdigest()[:16]

    def derive(self, info: bytes, length: int) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(
            self._secret
        )

    @classmethod
    def load(cls, path: str | Path) -> DeviceKey:
        """Read a key file, refusing one that group or others could read."""
        path = Path(path)
        try:
            st = path.stat()
        except FileNotFoundError as e:
            raise KeyFileError(
                f"no device key at {path}; the daemon (palm-agent run) creates it on first start"
            ) from e
        except OSError as e:
            raise KeyFileError(f"device key {path} cannot be read: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"device key {path} is not a file")
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"device key {path} has mode {stat.S_IMODE(st.st_mode):04o}; it must be private "
                f"to its owner: chmod 600 {path}"
            )
        try:
            data = path.read_bytes()
        except OSError as e:  # e.g. root's, after a rekey run by hand (docs/security.md)
            raise KeyFileError(
                f"device key {path} cannot be read by this process (uid {os.geteuid()}): "
                f"{e.strerror}; it must belong to the service's user (chown it back after a "
                "command run as root: docs/security.md), and a command beside the service runs "
                "as root or over MQTT"
            ) from None
        if len(data) != KEY_BYTES:
            raise KeyFileError(f"device key {path} holds {len(data)} bytes, expected {KEY_BYTES}")
        return cls(data)

    @classmethod
    def load_or_create(cls, path: str | Path) -> DeviceKey:
        """Load the key, or create it atomically with mode 0600 if it does not exist yet."""
        path = Path(path)
        if not path.exists():
            cls.generate().write(path)
        return cls.load(path)

    def write(self, path: str | Path) -> None:
        """Write this key to a new file (mode 0600); never overwrites an existing key."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, self._secret)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            # link() fails if another process created the key meanwhile: theirs wins, never ours.
            os.link(tmp, path)
            logger.info("device_key_created path=%s key_id=%s", path, self.key_id)
        except FileExistsError:
            logger.info("device_key_exists path=%s", path)
        finally:
            tmp.unlink()
        fsync_folder(path.parent)


class Protector:
    """The keyed transform for one code length, applied by byte lookup tables (fast on a probe)."""

    def __init__(self, key: DeviceKey, bits: int) -> None:
        codes.check_bits(bits)
        self.bits = bits
        self.key_id = key.key_id
        self.dtype = codes.word_dtype(bits)
        self.words = codes.n_words(bits)
        info = INFO_PREFIX + str(bits).encode()
        # Fisher-Yates driven by 64-bit draws; the modulo bias (< 2^-57) is immaterial here.
        draws = np.frombuffer(key.derive(info + b"/perm", 8 * bits), dtype="<u8")
        perm = list(range(bits))
        for i in range(bits - 1, 0, -1):
            j = int(draws[i]) % (i + 1)
            perm[i], perm[j] = perm[j], perm[i]
        self.perm = np.array(perm)
        mask_bits = np.unpackbits(
            np.frombuffer(key.derive(info + b"/mask", bits // 8), dtype=np.uint8), bitorder="little"
        ).astype(bool)
        self.mask = codes.pack_bits(mask_bits[None, :])[0]
        self._forward = self._tables(self.perm)
        self._inverse = self._tables(np.argsort(self.perm))

    def _tables(self, perm: np.ndarray) -> np.ndarray:
        """(bytes, 256, words) tables: the permuted image of each value of each input byte."""
        nbytes = self.bits // 8
        values = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little")
        out = np.zeros((nbytes, 256, self.words), dtype=self.dtype)
        for b in range(nbytes):
            raw = np.zeros((256, self.bits), dtype=bool)
            raw[:, 8 * b : 8 * b + 8] = values
            # output bit j takes input bit perm[j]
            out[b] = codes.pack_bits(raw[:, perm])
        return out

    def _apply(self, tables: np.ndarray, c: np.ndarray) -> np.ndarray:
        c = np.ascontiguousarray(np.asarray(c, dtype=self.dtype).reshape(-1, self.words))
        as_bytes = c.astype(c.dtype.newbyteorder("<"), copy=False).view(np.uint8)
        as_bytes = as_bytes[:, : self.bits // 8]
        parts = tables[np.arange(as_bytes.shape[1]), as_bytes]  # (n, bytes, words)
        return np.bitwise_or.reduce(parts, axis=1)

    def protect(self, c: np.ndarray) -> np.ndarray:
        """Raw packed codes (n, words) -> protected packed codes (n, words)."""
        return self._apply(self._forward, c) ^ self.mask

    def unprotect(self, c: np.ndarray) -> np.ndarray:
        """The inverse; the device only needs it to re-protect templates under a new key."""
        c = np.asarray(c, dtype=self.dtype).reshape(-1, self.words) ^ self.mask
        return self._apply(self._inverse, c)
