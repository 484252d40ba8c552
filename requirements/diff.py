"""Print what differs between two compiled requirement files: ``diff.py LOCK NEWER``.

Used by ``make upgrade-check`` to say which pinned versions the newest allowed ones replace. Reads
only ``name==version`` lines (markers kept apart, hashes ignored); standard library only, so it runs
before any environment exists.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)\s*(;[^\\]*)?")


def pins(path: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = PIN.match(line)
        if match:
            name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
            marker = (match.group(3) or "").strip()
            found[f"{name} {marker}".strip()] = match.group(2)
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: diff.py LOCK NEWER", file=sys.stderr)
        return 2
    old, new = (pins(Path(arg)) for arg in argv)
    changed = [
        f"  {name}: {old.get(name, '-')} -> {new.get(name, '-')}"
        for name in sorted(old.keys() | new.keys())
        if old.get(name) != new.get(name)
    ]
    if changed:
        print(f"newest allowed versions differ from the lock in {len(changed)} packages:")
        print("\n".join(changed))
    else:
        print("the lock already holds the newest allowed versions")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
