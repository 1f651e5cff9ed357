"""``palm-agent gallery ...`` (the template store) and ``palm-agent capacity`` (code capacity)."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from agent.cli import parse_number

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    g = subparsers.add_parser("gallery", help="list, show, revoke, rekey enrolled templates")
    gsub = g.add_subparsers(dest="action", required=True)
    for name, text in (
        ("list", "enrolled subjects"),
        ("show", "one subject and its template counts"),
        ("revoke", "delete a subject's templates"),
        ("rekey", "re-protect every template under a new device key"),
        ("stats", "counts, code length, key id, schema"),
    ):
        p = gsub.add_parser(name, help=text)
        p.add_argument("--db", required=True, type=Path, help="template database")
        p.add_argument("--key", required=True, type=Path, help="device key file (mode 0600)")
        if name in ("show", "revoke"):
            p.add_argument("label")
        if name == "list":
            p.add_argument("--all", action="store_true", help="include revoked subjects")
        p.set_defaults(func=run_gallery)

    c = subparsers.add_parser("capacity", help="false-match rates of K-bit codes at a gallery size")
    c.add_argument("--bits", type=_bits, default=32, help="code length (16, 32, 64, 128)")
    c.add_argument(
        "--gallery", type=_gallery_size, required=True, help="number of enrolled subjects"
    )
    c.add_argument(
        "--target-fpir", type=_rate, default=0.01, help="largest false-positive rate (0-1)"
    )
    c.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    c.set_defaults(func=run_capacity)


def _bits(text: str) -> int:
    """--bits: a code length the device supports (a traceback named it before)."""
    from agent.codes import SUPPORTED_BITS

    bits = parse_number(text, int)
    if bits not in SUPPORTED_BITS:
        known = ", ".join(map(str, SUPPORTED_BITS))
        raise argparse.ArgumentTypeError(f"{bits} is not a supported code length; use {known}")
    return bits


def _gallery_size(text: str) -> int:
    """--gallery: at least one subject (0 and negative sizes printed rates below zero)."""
    n = parse_number(text, int)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not a gallery size; give 1 or more subjects")
    return n


def _rate(text: str) -> float:
    """--target-fpir: a rate strictly between 0 and 1."""
    rate = parse_number(text, float)
    if not 0 < rate < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a rate between 0 and 1 (e.g. 0.01)")
    return rate


def run_capacity(args: argparse.Namespace) -> int:
    from agent import capacity

    rows = capacity.table(args.bits, args.gallery)
    largest = capacity.largest_threshold(args.bits, args.gallery, args.target_fpir)
    if args.json:
        print(json.dumps({"bits": args.bits, "rows": rows, "largest_t": largest}))
        return 0
    print(f"{args.bits}-bit codes, gallery of {args.gallery}")
    print(f"{'t':>3}  {'FMR per comparison':>18}  {'FPIR at N':>10}")
    for r in rows:
        print(f"{r['t']:>3}  {r['fmr']:>18.3e}  {r['fpir']:>10.3e}")
    if largest is None:
        print(f"no threshold keeps FPIR <= {args.target_fpir:g}; use 1:1 verification or more bits")
    else:
        print(f"largest t with FPIR <= {args.target_fpir:g}: {largest}")
    return 0


def run_gallery(args: argparse.Namespace) -> int:
    from agent.protect import KeyFileError
    from agent.store import StoreError

    try:
        out = _gallery_action(args)
    except (StoreError, KeyFileError) as e:
        logger.error("gallery_failed action=%s error=%s", args.action, e)
        return 2
    print(json.dumps(out, indent=2))
    return 0


def _gallery_action(args: argparse.Namespace):
    from agent.protect import DeviceKey, Protector
    from agent.store import StoreError, TemplateStore
    from agent.store_open import stored_bits

    bits = stored_bits(args.db)
    if bits is None:
        raise StoreError(f"{args.db} is not a template database (no code length recorded)")
    if args.action == "rekey":
        # beside a running daemon, its probes stayed under the old key while its gallery
        # reloaded the templates under the new one: every palm was refused until a restart
        from agent.run_cli import hold_store

        hold_store(args.db, over_mqtt="rekey")  # held until the command exits
    key = DeviceKey.load(args.key)
    with TemplateStore(args.db, Protector(key, bits)) as store:
        if args.action == "list":
            out = store.list(include_revoked=args.all)
        elif args.action == "show":
            out = store.show(args.label)
        elif args.action == "stats":
            out = store.stats()
        elif args.action == "revoke":
            store.revoke(args.label)
            out = {"revoked": args.label}
        else:
            out = rekey_store(store, args.key)
    return out


def rekey_store(store, key_path: Path) -> dict:
    """New key beside the old one, templates re-protected, then the new key takes its place.

    If the process dies between the commit and the rename, the store names the new key id and
    ``KEY.new`` holds that key: move it over KEY by hand (the error on open says so).
    """
    from agent.protect import DeviceKey, Protector

    pending = key_path.with_name(key_path.name + ".new")
    if pending.exists():
        pending.unlink()
    new_key = DeviceKey.generate()
    new_key.write(pending)
    owner = key_path.stat()
    if (owner.st_uid, owner.st_gid) != (os.geteuid(), os.getegid()):
        # root rekeying the service's store by hand: the key stays the service's (systemd does
        # not chown a state directory's files again, and the service could no longer read it)
        os.chown(pending, owner.st_uid, owner.st_gid)
    old_id = store.protector.key_id
    try:
        store.rekey(Protector(new_key, store.bits))
    except BaseException:  # nothing committed: the new key never protected anything
        pending.unlink(missing_ok=True)
        raise
    os.replace(pending, key_path)
    logger.info("key_replaced path=%s old=%s new=%s", key_path, old_id, new_key.key_id)
    return {"old_key_id": old_id, "new_key_id": new_key.key_id}
