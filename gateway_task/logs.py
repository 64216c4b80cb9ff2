"""The gateway's log lines: one line per message, whatever a client put in a string.

Claim values, usernames, database names and reasons quoting them come from clients. A NUL, a
newline or a terminal escape in one of them must not end a log line early, forge the next one,
or drive an operator's terminal: every control character in a message is written escaped
(`\\n`, `\\x00`, `\\x1b`, `\\u2028`). A traceback keeps its own newlines: it is the gateway's.
"""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
_ESCAPES = {
    code: _NAMED.get(chr(code), f"\\x{code:02x}")
    for code in (*range(0x20), 0x5C, 0x7F, *range(0x80, 0xA0))
}
_ESCAPES |= {0x2028: "\\u2028", 0x2029: "\\u2029"}


def escape(text: str) -> str:
    """`text` with every control character (and the backslash) written as an escape."""
    return text.translate(_ESCAPES)


class OneLineFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)


def configure(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
