"""What a PostgreSQL client was shown: result sets recovered from the server-to-client bytes.

Sans-IO: feed the decrypted server-to-client frames in order, take completed result sets. The
gateway's relay seals one `result` event per CommandComplete, EmptyQueryResponse and
PortalSuspended it forwards, so the n-th result set here belongs to the n-th `result` event.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tapegate.protocols.postgres import messages as m

DEFAULT_MAX_ROWS = 20


@dataclass
class ResultSet:
    columns: list[str] = field(default_factory=list)
    rows: list[list[str | None]] = field(default_factory=list)  # the first max_rows
    total_rows: int = 0
    tag: str = ""
    copy_lines: list[str] = field(default_factory=list)  # COPY TO STDOUT data, also capped

    @property
    def capped(self) -> int:
        """How many rows (or COPY lines) were left out."""
        return self.total_rows - len(self.rows) - len(self.copy_lines)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", errors="backslashreplace")


class ResultReader:
    def __init__(self, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        self.max_rows = max_rows
        self._reader = m.MessageReader()
        self._current = ResultSet()
        self.broken: str | None = None  # why reading stopped, if the bytes stopped making sense

    def feed(self, data: bytes) -> list[ResultSet]:
        """Bytes in; the result sets they completed out."""
        if self.broken:
            return []
        self._reader.feed(data)
        done: list[ResultSet] = []
        try:
            for tag, body, _ in self._reader.messages():
                finished = self._message(tag, body)
                if finished is not None:
                    done.append(finished)
        except m.ProtocolError as exc:  # the codec's only exception, whatever the bytes
            self.broken = f"server bytes stopped parsing: {exc}"
        return done

    def _message(self, tag: int, body: bytes) -> ResultSet | None:
        cur = self._current
        if tag == ord("T"):
            cur.columns = m.decode_row_description(body)
        elif tag == ord("D"):
            cur.total_rows += 1
            if len(cur.rows) < self.max_rows:
                cur.rows.append([_text(v) for v in m.decode_data_row(body)])
        elif tag == ord("d"):
            cur.total_rows += 1
            if len(cur.copy_lines) < self.max_rows:
                cur.copy_lines.append(_text(body.rstrip(b"\n")) or "")
        elif tag in (ord("C"), ord("I"), ord("s")):
            if tag == ord("C"):
                cur.tag = m.decode_command_complete(body)
            else:
                cur.tag = "EMPTY" if tag == ord("I") else "SUSPENDED"
            self._current = ResultSet()
            return cur
        elif tag == ord("E"):
            self._current = ResultSet()  # the statement failed: what came so far is not a result
        return None
