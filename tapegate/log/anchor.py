"""Anchors: the latest checkpoint, copied out of the log's reach once a day.

Whoever controls the log (its bucket, its key) could roll it back or sign a different history
that agrees with itself. An anchor is a copy of a checkpoint in a place they do not control: on
AWS a separate bucket with Object Lock in compliance mode (optionally in another account), so
that not even the account's root user can remove it before its retention ends. When a timestamp
authority is configured, an RFC 3161 token over the checkpoint says when it existed, on the
word of a third party.

    anchors/<origin>/<YYYY-MM-DD>.note   the checkpoint as the log signed it
    anchors/<origin>/<YYYY-MM-DD>.tsr    the TSA's TimeStampResp (DER), when configured

`tapegate log verify` treats every anchored checkpoint as one of the log's own: it must be
signed by a trusted log key and consistent with the rest, so a log rolled back behind its
anchor shows as truncated or inconsistent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import urllib.request
from collections.abc import Callable

from tapegate.log.sequencer import LATEST, read_note
from tapegate.log.tiles import Store

PREFIX = "anchors/"
Timestamper = Callable[[bytes], bytes]  # a note → a DER TimeStampResp over it


class AnchorError(Exception):
    """No checkpoint to anchor, or the timestamp authority's answer was not a valid token."""


def anchor_key(origin: str, day: dt.date, suffix: str = ".note") -> str:
    return f"{PREFIX}{origin}/{day.isoformat()}{suffix}"


def write_anchor(
    log: Store,
    log_prefix: str,
    anchors: Store,
    origin: str,
    day: dt.date,
    timestamper: Timestamper | None = None,
) -> str:
    """Copy the log's latest checkpoint to `anchors` under the day's name; the key written."""
    note = read_note(log, log_prefix + LATEST)
    if note is None:
        raise AnchorError("the log has no checkpoint to anchor yet")
    key = anchor_key(origin, day)
    anchors.put(key, note)
    if timestamper is not None:
        anchors.put(anchor_key(origin, day, ".tsr"), timestamper(note))
    return key


def anchored_notes(anchors: Store, origin: str) -> list[tuple[str, bytes]]:
    out = []
    for key in sorted(anchors.list(f"{PREFIX}{origin}/")):
        if key.endswith(".note"):
            note = read_note(anchors, key)
            if note is not None:
                out.append((key, note))
    return out


def rfc3161_timestamper(url: str, timeout_s: float = 10.0) -> Timestamper:
    """Ask the TSA at `url` for a token over SHA-256(note) (rfc3161-client builds the request
    and reads the answer: no ASN.1 here), and check that the token answers that request."""

    def stamp(note: bytes) -> bytes:
        import rfc3161_client

        request = (
            rfc3161_client.TimestampRequestBuilder()
            .data(note)
            .hash_algorithm(rfc3161_client.HashAlgorithm.SHA256)
            .nonce(nonce=True)
            .cert_request(cert_request=True)
            .build()
        )
        post = urllib.request.Request(
            url, data=request.as_bytes(), headers={"Content-Type": "application/timestamp-query"}
        )
        try:
            with urllib.request.urlopen(post, timeout=timeout_s) as answer:
                der = answer.read()
        except OSError as exc:
            raise AnchorError(f"timestamp authority {url}: {exc}") from None
        check_token(der, note, request.nonce)
        return der

    return stamp


def check_token(der: bytes, note: bytes, nonce: int | None = None) -> dt.datetime:
    """The token's time, once it is a granted token whose message imprint is SHA-256 of `note`
    (and whose nonce is ours). The TSA's signature and certificate chain are for whoever trusts
    that TSA to check, with rfc3161-client's verifier and the TSA's root."""
    import rfc3161_client

    try:
        response = rfc3161_client.decode_timestamp_response(der)
        status = int(response.status)
        info = response.tst_info
    except ValueError as exc:
        raise AnchorError(f"not a timestamp response: {exc}") from None
    if status not in (0, 1):  # granted, granted with modifications
        raise AnchorError(f"the timestamp authority refused: status {status}")
    if info.message_imprint.message != hashlib.sha256(note).digest():
        raise AnchorError("the timestamp token is over something else")
    if nonce is not None and info.nonce != nonce:
        raise AnchorError("the timestamp token answers another request (nonce)")
    when = info.gen_time
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
