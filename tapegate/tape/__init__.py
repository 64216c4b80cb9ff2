"""The sealed tape: the one format every part of tapegate writes or reads (docs/FORMAT.md)."""

from tapegate.tape.codec import (
    MAX_RECORD_BYTES,
    Record,
    SplitError,
    TapeFormatError,
    decode_record,
    split_records,
)
from tapegate.tape.model import (
    Direction,
    Event,
    Frame,
    Identity,
    SessionEnd,
    SessionHeader,
    Stream,
    new_session_id,
)
from tapegate.tape.seal import PayloadError, key_id, open_frames, open_session_key
from tapegate.tape.verify import Problem, ProblemKind, Verdict, verify_session
from tapegate.tape.writer import TapeWriter

__all__ = [
    "MAX_RECORD_BYTES",
    "Direction",
    "Event",
    "Frame",
    "Identity",
    "PayloadError",
    "Problem",
    "ProblemKind",
    "Record",
    "SessionEnd",
    "SessionHeader",
    "SplitError",
    "Stream",
    "TapeFormatError",
    "TapeWriter",
    "Verdict",
    "decode_record",
    "key_id",
    "new_session_id",
    "open_frames",
    "open_session_key",
    "split_records",
    "verify_session",
]
