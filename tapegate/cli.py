"""The `tapegate` command.

Exit codes follow the verifier's contract: 0 when every check holds, 1 when a check fails,
2 for usage errors (unreadable files, bad arguments).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tapegate.keys import KeyFileError, Keyring, LocalKeyStore
from tapegate.tape import Verdict, decode_record, split_records, verify_session
from tapegate.tape.codec import TapeFormatError

DEFAULT_DATA_DIR = Path(".tapegate")


class UsageError(Exception):
    """Bad arguments or unreadable input: exit 2 with one clear line."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"tapegate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tapegate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    verify = sub.add_parser(
        "verify",
        help="check sealed records: signatures, chain, completeness",
        description="Verify delivery objects (sealed records as the archive stores them).",
    )
    verify.add_argument("files", nargs="+", type=Path, metavar="FILE")
    verify.add_argument(
        "--trust",
        action="append",
        type=Path,
        default=[],
        metavar="PUBFILE",
        help="an Ed25519 public key file (hex) to trust; repeatable. Default: the data dir's keys.",
    )
    verify.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    verify.set_defaults(func=cmd_verify)

    demo = sub.add_parser("demo", help="record, seal and verify a synthetic session")
    demo.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    demo.set_defaults(func=cmd_demo)
    return parser


def _trusted(args: argparse.Namespace) -> Keyring:
    try:
        if args.trust:
            return Keyring.from_files(args.trust)
        return LocalKeyStore(args.data_dir).trusted()
    except (OSError, KeyFileError) as exc:
        raise UsageError(f"cannot load trusted keys: {exc}") from None


def cmd_verify(args: argparse.Namespace) -> int:
    trusted = _trusted(args)
    records: list[bytes] = []
    for path in args.files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        found, errors = split_records(data)
        records += found
        for err in errors:
            print(f"{path}: damaged bytes at offset {err.offset}: {err.reason}")
    if not records:
        print("no sealed records found")
        return 1
    ok = True
    for session_id, group in _by_session(records).items():
        verdict = verify_session(group, trusted, session_id)
        print(format_verdict(verdict))
        ok = ok and verdict.intact
    return 0 if ok else 1


def _by_session(records: list[bytes]) -> dict[object, list[bytes]]:
    groups: dict[object, list[bytes]] = {}
    for raw in records:
        try:
            sid: object = decode_record(raw).session_id
        except TapeFormatError:
            sid = None  # the verifier reports it as undecodable
        groups.setdefault(sid, []).append(raw)
    return groups


def format_verdict(verdict: Verdict) -> str:
    head = f"session {verdict.session_id}: {verdict.chunks} chunks, "
    if verdict.intact:
        return head + f"intact (signatures, chain and final chunk {verdict.final_seq} all check)"
    lines = [head + f"{verdict.status.upper()} — {len(verdict.problems)} problem(s)"]
    lines += [f"  - {problem}" for problem in verdict.problems]
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    from tapegate.demo import run_tape_demo

    return run_tape_demo(args.data_dir)


if __name__ == "__main__":
    sys.exit(main())
