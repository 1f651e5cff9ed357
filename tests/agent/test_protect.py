import os
import stat

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import codes
from agent.protect import DeviceKey, KeyFileError, Protector

from .conftest import unprivileged


def _random_codes(bits, n, seed):
    rng = np.random.default_rng(seed)
    return codes.pack_bits(rng.random((n, bits)) > 0.5)


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from(codes.SUPPORTED_BITS), seed=st.integers(0, 2**32 - 1))
def test_protection_preserves_every_distance_and_changes_bits(bits, seed):
    key = DeviceKey(np.random.default_rng(seed).bytes(32))
    p = Protector(key, bits)
    raw = _random_codes(bits, 24, seed)
    prot = p.protect(raw)
    assert prot.dtype == raw.dtype and prot.shape == raw.shape
    assert np.array_equal(codes.hamming_matrix(prot, prot), codes.hamming_matrix(raw, raw))
    # stored bits differ from the raw code: on average half of them flip
    flipped = codes.hamming_matrix(raw, prot).diagonal()
    assert flipped.mean() > bits / 4
    assert np.array_equal(p.unprotect(prot), raw)
    # padding bits of 16-bit codes stay zero
    assert not (codes.to_int(prot[0]) >> bits)


@pytest.mark.parametrize("bits", codes.SUPPORTED_BITS)
def test_two_device_keys_give_unrelated_templates(bits):
    raw = _random_codes(bits, 400, bits)
    a = Protector(DeviceKey.generate(), bits).protect(raw)
    b = Protector(DeviceKey.generate(), bits).protect(raw)
    d = np.array([codes.hamming(x, y[None])[0] for x, y in zip(a, b, strict=True)])
    # same palm on two devices: as far apart as two random codes (K/2), not near 0
    assert abs(d.mean() - bits / 2) < 0.1 * bits + 1
    assert (d <= bits // 8).mean() < 0.05


def test_transform_is_per_key_and_per_length_but_deterministic():
    key = DeviceKey(bytes(range(32)))
    assert np.array_equal(Protector(key, 32).perm, Protector(key, 32).perm)
    assert sorted(Protector(key, 64).perm) == list(range(64))
    assert not np.array_equal(Protector(key, 32).perm, Protector(DeviceKey(bytes(32)), 32).perm)


def test_key_file_created_private_and_reloaded(tmp_path):
    path = tmp_path / "sub" / "device.key"
    old = os.umask(0o000)  # even a permissive umask must not make the key readable by others
    try:
        key = DeviceKey.load_or_create(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) == 32
    assert DeviceKey.load_or_create(path).key_id == key.key_id
    assert [p.name for p in path.parent.iterdir()] == ["device.key"]  # no temp file left


def test_world_readable_or_malformed_key_is_refused(tmp_path):
    path = tmp_path / "device.key"
    DeviceKey.load_or_create(path)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        DeviceKey.load(path)
    path.chmod(0o600)
    path.write_bytes(b"short")
    with pytest.raises(KeyFileError, match="expected 32"):
        DeviceKey.load(path)
    with pytest.raises(KeyFileError, match="no device key"):
        DeviceKey.load(tmp_path / "missing.key")
    # one that is no key file at all, or one the daemon cannot read (root's, after a rekey run
    # by hand), is a key error too: exit 2 and one line, not a traceback
    folder = tmp_path / "folder.key"
    folder.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="is not a file"):
        DeviceKey.load(folder)
    path.write_bytes(bytes(32))
    path.chmod(0)
    out = unprivileged(
        "import sys\nfrom agent.protect import DeviceKey, KeyFileError\n"
        f"try:\n    DeviceKey.load({str(path)!r})\n"
        "except KeyFileError as e:\n    sys.exit(str(e))\n"
    )
    assert out.returncode == 1 and "cannot be read by this process" in out.stderr, out.stderr
