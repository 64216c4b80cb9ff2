"""The specifications say what the code's registries say: a reason, a problem kind or a leaf
kind cannot be added to the code without its line in docs/FORMAT.md or docs/LOG.md."""

from __future__ import annotations

import re
from pathlib import Path

from tapegate.log.leaf import LeafKind
from tapegate.log.verify import LogProblemKind
from tapegate.tape import ProblemKind
from tapegate.vocab import END_REASONS, EndReason, end_reason_table

DOCS = Path(__file__).parent.parent / "docs"
FORMAT = (DOCS / "FORMAT.md").read_text()
LOG = (DOCS / "LOG.md").read_text()


def test_every_end_reason_has_its_description() -> None:
    assert set(END_REASONS) == set(EndReason)


def test_formats_table_of_end_reasons_is_the_generated_one() -> None:
    block = re.search(r"<!-- generated from tapegate/vocab.py.*?-->\n(.*?)  <!-- end of generated",
                      FORMAT, re.S)  # fmt: skip
    assert block is not None, "FORMAT.md lost its generated table of end reasons"
    assert block.group(1) == end_reason_table()


def test_every_problem_kind_is_specified() -> None:
    for kind in ProblemKind:
        assert f"`{kind.value}`" in FORMAT, kind
    for kind in LogProblemKind:
        assert f"`{kind.value}`" in LOG, kind


def test_every_leaf_kind_has_its_row() -> None:
    for kind in LeafKind:
        assert re.search(rf"^\| `{kind.value}` \|", LOG, re.M), kind
