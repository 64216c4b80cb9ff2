"""`tapegate show | replay | verify | export`: the auditor's commands, on either archive kind.

Every verdict here comes from the raw delivered records and the trusted public keys; the index
only says which objects to read. Bad input (an unknown session, a corrupt bundle, a wrong key,
no archive) is one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from nacl.public import PrivateKey

from tapegate.audit.bundle import BundleError, read_bundle, write_bundle
from tapegate.audit.evidence import EvidenceError, SessionEvidence, gather, parse_session_id
from tapegate.audit.render import JsonLines, RenderError, TextTimeline, render
from tapegate.audit.summary import format_summary, summarize, summary_lines
from tapegate.audit.timeline import Replay, auditor_keyring, extend, open_replay
from tapegate.cli.common import (
    UsageError,
    by_session,
    config_arg,
    format_verdict,
    load,
    open_archive,
)
from tapegate.keys import KeyFileError, Keyring, LocalKeyStore, load_auditor_key
from tapegate.present import Output
from tapegate.protocols.registry import formats
from tapegate.tape import Verdict, split_records, verify_session
from tapegate.tape.codec import LEAF_MAGIC


def add_commands(sub: Any) -> None:
    show = sub.add_parser("show", help="a session's header, identity, verdict and summary")
    show.add_argument("session", metavar="SESSION")
    show.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    _trust_arg(show)
    config_arg(show)
    show.set_defaults(func=cmd_show)

    replay = sub.add_parser(
        "replay",
        help="a session's timeline: statements, results, errors, blocked statements",
        description="Replay a session from its sealed records. Payloads (result rows, terminal "
        "output) need the auditor private key; without it, events and sizes are shown.",
    )
    replay.add_argument("session", metavar="SESSION")
    replay.add_argument("--format", choices=["text", "json", *formats()], default="text")
    replay.add_argument(
        "--speed",
        type=float,
        default=0.0,
        metavar="X",
        help="pace output at X times recorded speed (idle gaps capped at 2 s); "
        "default: all at once",
    )
    replay.add_argument("--follow", action="store_true", help="tail an open session live")
    replay.add_argument("--max-rows", type=int, default=20, help="rows shown per result")
    replay.add_argument(
        "--auditor-key",
        metavar="FILE|SECRET_ARN",
        help="the auditor's X25519 private key (default: archive.auditor_key, "
        "else the data dir's keys/auditor.key)",
    )
    _trust_arg(replay)
    config_arg(replay)
    replay.set_defaults(func=cmd_replay)

    verify = sub.add_parser(
        "verify",
        help="check a session, an evidence bundle or delivery files: signatures, chain, end",
        description="Verify from the raw evidence: a SESSION id (read from the archive's "
        "delivered objects), an evidence BUNDLE (offline, with the keys it carries unless "
        "--trust pins them), or delivery object FILEs. Exit 0 when intact, 1 naming each "
        "problem, 2 for usage errors.",
    )
    verify.add_argument("targets", nargs="+", metavar="SESSION|BUNDLE|FILE")
    _trust_arg(verify)
    verify.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="for FILEs: whose keys to trust (default: the config's data dir)",
    )
    verify.add_argument(
        "--since-checkpoint",
        type=Path,
        metavar="FILE",
        help="for a BUNDLE: your last known log checkpoint; the bundle's must extend it",
    )
    verify.add_argument(
        "--trust-log",
        type=Path,
        action="append",
        metavar="VKEYFILE",
        help="for a BUNDLE: the log verifier key(s) to trust instead of the bundle's own",
    )
    config_arg(verify)
    verify.set_defaults(func=cmd_verify)

    export = sub.add_parser(
        "export",
        help="write an evidence bundle (zip) that `tapegate verify FILE` checks offline",
    )
    export.add_argument("session", metavar="SESSION")
    export.add_argument("-o", "--output", required=True, type=Path, metavar="FILE")
    _trust_arg(export)
    config_arg(export)
    export.set_defaults(func=cmd_export)

    from tapegate.audit.log import add_log_commands

    add_log_commands(sub)


def _trust_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust",
        action="append",
        type=Path,
        default=[],
        metavar="PUBFILE",
        help="an Ed25519 public key file (hex) to trust instead of the archive's; repeatable",
    )


# -- loading ------------------------------------------------------------------------------------


def _trusted(args: argparse.Namespace, archive: Any) -> Keyring:
    try:
        return Keyring.from_files(args.trust) if args.trust else archive.trusted()
    except (OSError, KeyFileError) as exc:
        raise UsageError(f"cannot load trusted keys: {exc}") from None


def _evidence(
    args: argparse.Namespace, readable: bool = True
) -> tuple[Any, SessionEvidence, Verdict]:
    """The session's evidence and verdict; with `readable`, a usage error unless chunk 0 (who,
    what, the sealed session key) verified, since show, replay and export need it."""
    try:
        sid = parse_session_id(args.session)
        archive = open_archive(load(args))
        evidence = gather(sid, archive.index, archive.evidence)
    except EvidenceError as exc:
        raise UsageError(str(exc)) from None
    except UsageError:
        raise
    except Exception as exc:  # no archive at all, no credentials, no such bucket...
        raise UsageError(f"cannot read the archive: {str(exc).splitlines()[0]}") from None
    verdict = evidence.verify(_trusted(args, archive))
    if readable and (not verdict.records or verdict.records[0].seq != 0):
        problems = "; ".join(str(p) for p in verdict.problems) or "no records"
        raise UsageError(f"session {sid}: no verified chunk 0 to read ({problems})")
    return archive, evidence, verdict


def _auditor_keys(args: argparse.Namespace, archive: Any) -> dict[bytes, PrivateKey]:
    spec = args.auditor_key or load(args).archive.auditor_key
    if spec is None:
        default = archive.default_auditor_key
        if default is None or not Path(default).exists():
            return {}
        spec = str(default)
    try:
        return auditor_keyring([load_auditor_key(spec, load(args).archive.region)])
    except KeyFileError as exc:
        raise UsageError(str(exc)) from None


# -- commands -----------------------------------------------------------------------------------


def cmd_show(args: argparse.Namespace) -> int:
    _, evidence, verdict = _evidence(args)
    summary = summarize(open_replay(verdict.records, {}), verdict)
    summary["damaged_bytes"] = evidence.damage
    out = Output()
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        for label, value, style in summary_lines(summary):
            out.pair(label, value, style)
        for damage in evidence.damage:
            out.line(f"damaged     {damage}", "red")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    archive, _, verdict = _evidence(args)
    keys = _auditor_keys(args, archive)
    replay = open_replay(_contiguous(verdict), keys)
    out = Output()
    try:
        if args.format not in ("text", "json"):
            for line in render(replay, args.format):
                print(line)
            return 0
    except RenderError as exc:
        raise UsageError(str(exc)) from None
    if args.format == "json":
        jsonl = JsonLines(replay, args.max_rows)
        if replay.payload_note:
            print(f"tapegate: {replay.payload_note}", file=sys.stderr)

        def emit(events: list[dict[str, Any]], frames: list[Any]) -> None:
            for line in jsonl.lines(events, frames):
                print(line, flush=args.follow)
    else:
        text = TextTimeline(replay, args.max_rows)
        for style, line in text.header():
            out.line(line, style)
        pacer = _Pacer(args.speed)

        def emit(events: list[dict[str, Any]], frames: list[Any]) -> None:
            for ev, (style, line) in _with_events(events, text.lines(events, frames)):
                if ev is not None:
                    pacer.wait(int(ev.get("ts", 0)))
                out.line(line, style)

    emit(replay.events, replay.frames)
    if args.follow:
        _follow(args, archive, replay, emit)
    if args.format == "text":
        for style, line in text.footer():
            out.line(line, style)
    return 0


def _with_events(events: list[dict[str, Any]], lines: Any) -> Any:
    """Pair each text line with the event it starts (None for continuation lines), for pacing."""
    pending = iter(events)
    for style, line in lines:
        starts = line.startswith("+")
        yield (next(pending, None) if starts else None), (style, line)


class _Pacer:
    def __init__(self, speed: float) -> None:
        self.speed, self.last = speed, None

    def wait(self, ts_ns: int) -> None:
        if self.speed <= 0:
            return
        if self.last is not None and ts_ns > self.last:
            time.sleep(min((ts_ns - self.last) / 1e9 / self.speed, 2.0))
        self.last = ts_ns


def _contiguous(verdict: Verdict) -> list[Any]:
    """The accepted chunks from 0 up to the first gap: a replay never skips over a hole."""
    out = []
    for rec in verdict.records:
        if rec.seq != len(out):
            break
        out.append(rec)
    return out


def _follow(args: argparse.Namespace, archive: Any, replay: Replay, emit: Any) -> None:
    """Poll the archive once a second for the session's new chunks until its final chunk."""
    sid = parse_session_id(args.session)
    trusted = _trusted(args, archive)
    try:
        while replay.end is None:
            time.sleep(1.0)
            archive.scan()  # the embedded archive indexes new deliveries; in AWS the Lambda does
            verdict = gather(sid, archive.index, archive.evidence).verify(trusted)
            events, frames = extend(replay, _contiguous(verdict))
            if events or frames:
                emit(events, frames)
    except KeyboardInterrupt:
        pass
    except EvidenceError as exc:  # e.g. an object gone since the last look
        raise UsageError(str(exc)) from None


def cmd_export(args: argparse.Namespace) -> int:
    archive, evidence, verdict = _evidence(args)
    trusted = _trusted(args, archive)
    summary = summarize(open_replay(verdict.records, {}), verdict)
    report = format_summary(summary) + (
        "\n\nCheck this bundle on any machine with tapegate installed:\n"
        f"    tapegate verify {args.output.name}\n"
        "and compare the signing key's fingerprint it prints with the gateway's published one.\n"
    )
    log_files = _log_files(archive, str(evidence.session_id))
    try:
        manifest = write_bundle(args.output, evidence, trusted, verdict, report, log_files)
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror}") from None
    records = sum(e.get("records", 0) for e in manifest["files"])
    print(
        f"wrote {args.output}: session {evidence.session_id}, {records} records from "
        f"{len(evidence.pieces)} delivered object(s), verdict {verdict.status}"
    )
    return 0


def _log_files(archive: Any, session_id: str) -> dict[str, bytes]:
    """The session's place in the session log, for its bundle; none where the archive has no
    log (yet) or the log does not hold the session's leaves."""
    if not hasattr(archive, "log_sources"):
        return {}
    from tapegate.log.proofs import bundle_files

    try:
        return bundle_files(archive.log_sources(), session_id)
    except Exception as exc:  # a key, a file, an AWS call (botocore's errors name it)
        if not isinstance(exc, KeyFileError | OSError | ValueError) and not type(
            exc
        ).__module__.startswith(("botocore", "boto3")):
            raise
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"tapegate: the bundle goes without its log proofs: {reason}", file=sys.stderr)
        return {}


def cmd_verify(args: argparse.Namespace) -> int:
    files: list[Path] = []
    ok = True
    for target in args.targets:
        path = Path(target)
        if path.is_file() and _looks_like_zip(path):
            ok = _verify_bundle(args, path) and ok
        elif path.exists():
            files.append(path)
        elif path.suffix in (".zip", ".bin") or "/" in target:
            raise UsageError(f"cannot read {target}: no such file")
        else:
            args.session = target
            _, evidence, verdict = _evidence(args, readable=False)
            for damage in evidence.damage:
                print(damage)
            print(format_verdict(verdict))
            ok = ok and verdict.intact and not evidence.damage
    if files:
        ok = _verify_files(args, files) and ok
    return 0 if ok else 1


def _looks_like_zip(path: Path) -> bool:
    """By name or by its first bytes: a truncated bundle has lost the directory at its end that
    zipfile.is_zipfile looks for, and still deserves the bundle's error, not a tape's."""
    with path.open("rb") as fh:
        return path.suffix == ".zip" or fh.read(4) == b"PK\x03\x04"


def _verify_bundle(args: argparse.Namespace, path: Path) -> bool:
    try:
        bundle = read_bundle(path)
    except BundleError as exc:
        print(f"{path}: NOT VERIFIED — {exc}")
        return False
    pinned = _trusted(args, None) if args.trust else None
    verdict = bundle.verify(pinned)
    print(
        f"bundle {path}: {len(bundle.records)} records, "
        f"{len(bundle.manifest.get('files', []))} files listed"
    )
    for problem in bundle.problems:
        print(f"  - {problem}")
    keys = pinned if pinned is not None else bundle.keys
    for kid, vk in keys.items():
        source = "pinned with --trust" if pinned is not None else "carried by the bundle"
        print(f"  signing key {kid.hex()} ({source}): public key {bytes(vk).hex()}")
    log_ok = _verify_bundle_log(args, bundle, verdict, keys)
    print(format_verdict(verdict))
    return verdict.intact and not bundle.problems and log_ok


def _verify_bundle_log(
    args: argparse.Namespace, bundle: Any, verdict: Verdict, keys: Keyring
) -> bool:
    """The bundle's log part: the session's leaves in a signed checkpoint (docs/LOG.md)."""
    from tapegate.audit.bundle import read_verifier_keys
    from tapegate.log.note import verifier_key
    from tapegate.log.proofs import check_session_proofs

    since = _read_arg_file(args.since_checkpoint) if args.since_checkpoint else None
    if bundle.log_note is None:
        print("  session log: no proofs in this bundle (the log did not hold the session yet)")
        if since is not None:
            print("  - cannot check it against --since-checkpoint")
        return since is None
    log_keys = bundle.log_keys
    source = "carried by the bundle"
    if args.trust_log:
        try:
            log_keys = {}
            for path in args.trust_log:
                log_keys |= read_verifier_keys(_read_arg_file(path).decode())
        except (ValueError, UnicodeDecodeError) as exc:
            raise UsageError(f"--trust-log: not a log verifier key ({exc})") from None
        source = "pinned with --trust-log"
    covering, problems = check_session_proofs(
        bundle.log_note, bundle.log_proofs, bundle.session_id, log_keys, keys,
        verdict.head_digest if verdict.final_seq is not None else None, verdict.chunks, since,
    )  # fmt: skip
    for name, key in log_keys.items():
        print(f"  log key ({source}): {verifier_key(name, key)}")
    if covering is not None:
        cp = covering.checkpoint
        extends = ", which extends --since-checkpoint" if since and not problems else ""
        print(f"  session log: its open and close leaves are in {cp.origin}'s checkpoint of "
              f"{cp.size} leaves{extends}")  # fmt: skip
    for problem in problems:
        print(f"  - {problem}")
    return not problems


def _read_arg_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def _verify_files(args: argparse.Namespace, files: list[Path]) -> bool:
    if args.trust:
        trusted = _trusted(args, None)
    else:
        data_dir = args.data_dir or load(args).data_dir
        try:
            trusted = LocalKeyStore(data_dir).trusted()
        except (OSError, KeyFileError) as exc:
            raise UsageError(f"cannot load trusted keys: {exc}") from None
    records: list[bytes] = []
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        found, errors = split_records(data)
        records += [r for r in found if r[:4] != LEAF_MAGIC]  # leaves: `tapegate log verify`
        for err in errors:
            print(f"{path}: damaged bytes at offset {err.offset}: {err.reason}")
    if not records:
        print("no sealed records found")
        return False
    ok = True
    for session_id, group in by_session(records).items():
        verdict = verify_session(group, trusted, session_id)
        print(format_verdict(verdict))
        ok = ok and verdict.intact
    return ok
