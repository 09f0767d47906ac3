"""Re-pin the shipped manifest: write the sha256 of data/checkpoints/MANIFEST.json into hashrobust/zoo.py.

hashrobust.zoo refuses to load from data/checkpoints/ when the manifest's sha256
differs from its MANIFEST_SHA256 constant, so a checkpoint rewritten together with
its manifest entry is caught. After rebuilding the zoo on purpose (`make zoo`), run

    python scripts/pin_manifest.py [--manifest PATH] [--zoo PATH]

and commit hashrobust/zoo.py with the new checkpoints. Only the hex digits of the
one line `MANIFEST_SHA256 = "<64 hex digits>"` change; every other byte of zoo.py
stays as it was. Prints `old -> new`; exits 1 with a message, changing nothing, if
the manifest is missing or that line is not found exactly once.
"""
from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIN_LINE = re.compile(rb'^MANIFEST_SHA256 = "([0-9a-f]{64})"', re.MULTILINE)


def main(argv: list[str] | None = None) -> int:
    """Rewrite the pin in `--zoo` to the sha256 of `--manifest`; 0 on success, 1 with a message on stderr."""
    parser = argparse.ArgumentParser(description="Write the sha256 of the shipped MANIFEST.json into zoo.py.")
    parser.add_argument("--manifest", type=Path, default=ROOT / "data" / "checkpoints" / "MANIFEST.json",
                        help="the manifest to pin (default: %(default)s)")
    parser.add_argument("--zoo", type=Path, default=ROOT / "hashrobust" / "zoo.py",
                        help="the module holding MANIFEST_SHA256 (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        new = hashlib.sha256(args.manifest.read_bytes()).hexdigest()
    except FileNotFoundError:
        print(f"error: no manifest {args.manifest}; build the zoo first (`make zoo`). Nothing was changed.",
              file=sys.stderr)
        return 1
    source = args.zoo.read_bytes()
    matches = list(PIN_LINE.finditer(source))
    if len(matches) != 1:
        print(f'error: {args.zoo} needs exactly one line `MANIFEST_SHA256 = "<64 lowercase hex digits>"`, '
              f"found {len(matches)}; is it hashrobust/zoo.py? Nothing was changed.", file=sys.stderr)
        return 1
    match = matches[0]
    old = match.group(1).decode()
    if old != new:
        args.zoo.write_bytes(source[:match.start(1)] + new.encode() + source[match.end(1):])
    print(f"{args.zoo}: MANIFEST_SHA256 {old} -> {new}{' (unchanged)' if old == new else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
