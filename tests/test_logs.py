"""Client-supplied strings cannot break, forge or colour the gateway's log lines."""

from __future__ import annotations

import logging

from gateway_task.logs import FORMAT, OneLineFormatter, escape


def _line(msg: str, *args: object, exc: BaseException | None = None) -> str:
    record = logging.LogRecord("tapegate.gateway", logging.INFO, __file__, 1, msg, args,
                               (type(exc), exc, exc.__traceback__) if exc else None)  # fmt: skip
    return OneLineFormatter(FORMAT).format(record)


def test_control_characters_in_arguments_are_escaped() -> None:
    hostile = "eve\x00\n2026-12-02 INFO tapegate.gateway admitted root\x1b[31m\u2028"
    line = _line("refused postgres %s: %s", "127.0.0.1:5", f"token subject {hostile}")
    assert "\n" not in line and "\x00" not in line and "\x1b" not in line and "\u2028" not in line
    assert "eve\\x00\\n2026-12-02 INFO" in line and "\\x1b[31m" in line and "\\u2028" in line


def test_escaping_is_unambiguous() -> None:
    assert escape("a\\x00") == "a\\\\x00"  # a literal backslash is doubled
    assert escape("a\x00") == "a\\x00"
    assert escape("plain ascii, ünïcode") == "plain ascii, ünïcode"


def test_a_traceback_keeps_its_lines() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError as exc:
        line = _line("session failed: %s", "x\ny", exc=exc)
    first, *rest = line.split("\n")
    assert first.endswith("session failed: x\\ny") and rest and "Traceback" in rest[0]
