"""Write the vocabulary's generated blocks into docs/FORMAT.md: `python -m tapegate.vocab.docs`.

Each block sits between a `<!-- generated from NAME ... -->` line and `<!-- end of generated -->`;
tests/test_docs.py checks that regenerating changes nothing, so the specification cannot drift
from the registries.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

from tapegate.vocab import end_reason_table, event_type_list

BLOCKS: dict[str, Callable[[], str]] = {
    "END_REASONS": end_reason_table,
    "EVENT_TYPES": event_type_list,
}
_BLOCK = re.compile(
    r"(<!-- generated from \S+ \((\w+)\)[^\n]*-->\n)(.*?)([ \t]*<!-- end of generated)", re.S
)


def regenerated(text: str) -> str:
    """The document with every generated block written afresh."""

    def fresh(m: re.Match[str]) -> str:
        return m.group(1) + BLOCKS[m.group(2)]() + m.group(4)

    return _BLOCK.sub(fresh, text)


def blocks_in(text: str) -> set[str]:
    return {m.group(2) for m in _BLOCK.finditer(text)}


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/FORMAT.md")
    path.write_text(regenerated(path.read_text()))


if __name__ == "__main__":
    main()
