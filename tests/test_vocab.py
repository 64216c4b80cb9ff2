"""The event registry (tapegate/vocab/events.py) is where every event type comes from: no
emitter names a type as a bare string, and every registered type is emitted somewhere. What each
recorded event holds is checked against the registry by the protocol tests themselves
(tests/vocab_check.py, through the gateway harness)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tapegate.vocab import EventType
from tests.vocab_check import event_problems

ROOT = Path(__file__).parent.parent
SOURCES = [p for d in ("tapegate", "gateway_task") for p in sorted((ROOT / d).rglob("*.py"))
           if "vocab" not in p.parts]  # fmt: skip
# Calls whose type argument is an event type: Event(ts, type, ...), and the helpers that build
# one (MCP's exchange and stdio bridge).
_TYPE_ARG = {"Event": 1, "_event": 0, "_note": 0, "Note": 0}


def _called(node: ast.Call) -> str | None:
    func = node.func
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)


def _literals(node: ast.expr) -> list[str]:
    """Bare strings an argument can evaluate to (through a conditional expression)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _literals(node.body) + _literals(node.orelse)
    return []


def test_no_emitter_names_an_event_type_as_a_bare_string() -> None:
    bare = []
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or _called(node) not in _TYPE_ARG:
                continue
            at = _TYPE_ARG[_called(node)]  # type: ignore[index]
            if len(node.args) > at:
                bare += [f"{path.relative_to(ROOT)}:{node.lineno} {s!r}"
                         for s in _literals(node.args[at])]  # fmt: skip
    assert not bare, "name these from EventType:\n" + "\n".join(bare)


def test_every_registered_type_is_emitted_somewhere() -> None:
    text = "\n".join(p.read_text() for p in SOURCES)
    unused = [t.name for t in EventType if f"EventType.{t.name}" not in text]
    assert not unused, f"registered but never written: {unused}"


@pytest.mark.parametrize(
    ("event", "protocol", "problem"),
    [
        ({"type": "querry", "dir": "c2s", "attrs": {}}, "postgres", "not in the registry"),
        ({"type": "query", "dir": "s2c", "attrs": {"sql": "x"}}, "postgres", "dir 's2c'"),
        ({"type": "query", "dir": "c2s", "attrs": {"sql": "x"}}, "http", "not registered for"),
        ({"type": "query", "dir": "c2s", "attrs": {"sequel": "x"}}, "postgres", "['sequel']"),
    ],
)
def test_the_check_the_protocol_tests_run_can_fail(event, protocol, problem) -> None:
    (found,) = event_problems([event], protocol)
    assert problem in found
    trimmed = {"type": "query", "dir": "c2s", "attrs": {"sql": "x", "trimmed": True}}
    assert event_problems([trimmed], "postgres") == []
