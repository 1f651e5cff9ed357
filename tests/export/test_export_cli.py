"""``palm-export keygen`` as docs/export.md and docs/security.md type it (no model needed)."""

from __future__ import annotations

import stat

from export.cli import main


def test_keygen_writes_prefix_pem_and_pub_into_a_new_folder(tmp_path):
    # the documented command, `palm-export keygen --out keys/bundle`, on a fresh checkout
    assert main(["keygen", "--out", str(tmp_path / "keys" / "bundle")]) == 0
    # a dot in the prefix stays: site.2024 gives site.2024.pem, not site.pem
    assert main(["keygen", "--out", str(tmp_path / "keys" / "site.2024")]) == 0
    keys = tmp_path / "keys"
    assert sorted(p.name for p in keys.iterdir()) == [
        "bundle.pem",
        "bundle.pub",
        "site.2024.pem",
        "site.2024.pub",
    ]
    assert stat.S_IMODE((keys / "site.2024.pem").stat().st_mode) == 0o600
    assert b"PUBLIC KEY" in (keys / "site.2024.pub").read_bytes()
