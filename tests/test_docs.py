"""The specifications say what the code's registries say: a reason, a problem kind or a leaf
kind cannot be added to the code without its line in docs/FORMAT.md or docs/LOG.md."""

from __future__ import annotations

import re
from pathlib import Path

from tapegate.log.leaf import LeafKind
from tapegate.log.verify import LogProblemKind
from tapegate.tape import ProblemKind
from tapegate.vocab import (
    END_REASONS,
    EVENT_TYPES,
    EndReason,
    EventType,
    end_reason_table,
    event_type_list,
)
from tapegate.vocab.docs import BLOCKS, blocks_in, regenerated

DOCS = Path(__file__).parent.parent / "docs"
FORMAT = (DOCS / "FORMAT.md").read_text()
LOG = (DOCS / "LOG.md").read_text()


def test_every_end_reason_has_its_description() -> None:
    assert set(END_REASONS) == set(EndReason)


def test_formats_vocabulary_is_the_generated_one() -> None:
    """The end reasons' table and the event types' list; `python -m tapegate.vocab.docs`
    rewrites them."""
    assert blocks_in(FORMAT) == set(BLOCKS), "FORMAT.md lost a generated block"
    assert regenerated(FORMAT) == FORMAT, "run python -m tapegate.vocab.docs"
    assert end_reason_table() in FORMAT and event_type_list() in FORMAT


def test_every_event_type_has_its_entry_and_its_line() -> None:
    assert set(EVENT_TYPES) == set(EventType)
    for kind, spec in EVENT_TYPES.items():
        assert spec.protocols and spec.dirs and spec.summary, kind
        assert re.search(rf"^- `{kind.value}` \(", FORMAT, re.M), kind


def test_every_problem_kind_is_specified() -> None:
    for kind in ProblemKind:
        assert f"`{kind.value}`" in FORMAT, kind
    for kind in LogProblemKind:
        assert f"`{kind.value}`" in LOG, kind


def test_every_leaf_kind_has_its_row() -> None:
    for kind in LeafKind:
        assert re.search(rf"^\| `{kind.value}` \|", LOG, re.M), kind
