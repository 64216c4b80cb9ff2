"""Which target a request path names, and that the path stays inside it however it is read.

A path is forwarded to `upstream + rest`; if the upstream reads `rest` as climbing above its
first segment, the agent reaches what the target does not expose (`/api/../admin`). Upstreams
disagree on how to read a path, so two readings are checked:

- RFC 3986's, widened by what many servers also do (percent-encoded dots, backslashes and
  encoded separators): the path is resolved in that reading and forwarded resolved.
- The most lenient servers' (decoded again and again, IIS's `%u002e`, overlong UTF-8, Tomcat
  and Spring's `;params`): no reading of these is the upstream's for sure, so the forwarded path
  is refused when any of them climbs out, and otherwise forwarded as it is.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Route:
    target: str
    path: str  # what follows the target segment, with the query: "/v1/items?x=1"


class PathEscape(ValueError):
    """The request path leaves its target once dot segments are resolved."""


# What many servers treat as a path separator besides "/": a backslash, and either encoded.
_SEPARATORS = re.compile(r"(/|\\|%2[fF]|%5[cC])")  # kept: a resolved path keeps its own
_DOT = re.compile(r"%2[eE]")


def route(request_target: bytes) -> Route | None:
    """`/api/v1/items?x=1` → Route("api", "/v1/items?x=1"). None for `*` or absolute forms.

    Raises PathEscape when the path climbs out of its target in either reading."""
    text = request_target.decode("ascii", errors="replace")  # llhttp lets only ASCII through
    if not text.startswith("/"):
        return None
    path, sep, query = text.partition("?")
    # Without encodings or backslashes, only a segment that starts with a dot can be one.
    if "/." not in path and "\\" not in path and "%" not in path:
        name, _, rest = path[1:].partition("/")
        return Route(name, "/" + rest + sep + query) if name else None
    parts = _SEPARATORS.split(path)  # "", "/", segment, separator, segment, ...
    segments = list(zip(parts[1::2], parts[2::2], strict=True))
    if any(_DOT.sub(".", seg) in (".", "..") for _, seg in segments):
        path = "".join(sep + seg for sep, seg in _resolve(segments))
    name, _, rest = path[1:].partition("/")
    if not name:
        return None
    if _climbs_when_read_leniently(rest):  # the path as forwarded, after the target segment
        raise PathEscape("the request path leaves its target (as some servers decode it)")
    return Route(name, "/" + rest + (sep + query))


Segments = list[tuple[str, str]]  # (the separator before it, the segment)


def _resolve(segments: Segments) -> Segments:
    """RFC 3986 §5.2.4's remove_dot_segments over split segments; the others keep the
    separator they came with (`DOMAIN%5Cuser` stays one segment for an upstream that reads
    it so)."""
    out: Segments = []
    for i, (sep, seg) in enumerate(segments):
        dots = _DOT.sub(".", seg)
        last = i == len(segments) - 1
        if dots == ".":
            if last:
                out.append((sep, ""))
        elif dots == "..":
            if len(out) <= 1:  # would pop the target segment itself, or go above the root
                raise PathEscape("the request path leaves its target (a '..' segment)")
            out.pop()
            if last:
                out.append((sep, ""))
        else:
            out.append((sep, seg))
    return out


# -- the lenient readings ----------------------------------------------------------------------

_ESCAPE = re.compile(rb"%([0-9a-fA-F]{2})|%[uU]([0-9a-fA-F]{4})")
_OVERLONG = re.compile(
    rb"[\xc0\xc1][\x80-\xbf]|\xe0[\x80-\x9f][\x80-\xbf]|\xf0[\x80-\x8f][\x80-\xbf]{2}"
)
_ANY_SEPARATOR = re.compile(rb"[/\\]")
_PLAIN = re.compile(rb"[^%.;\\]*")  # a segment every reading takes as one name
DECODINGS = 4  # a segment still changing after this many decodings is refused unread


def _climbs_when_read_leniently(rest: str) -> bool:
    """Whether some lenient reading of `rest` (the path after the target segment) climbs
    above it. Each "/" segment counts for the least it is worth in any of its readings: one
    reading may split it where another does not, and that must not buy depth for a later
    `..` (`x;%2fy/..;/..;/admin` is `x/../../admin` to Tomcat, which cuts `;%2fy` first)."""
    depth = 0
    for segment in rest.encode("ascii", "replace").split(b"/"):
        if _PLAIN.fullmatch(segment):
            depth += 1 if segment else 0
            continue
        net, lowest = _worth(segment)
        if depth + lowest < 0:
            return True
        depth += net
    return False


def _worth(segment: bytes) -> tuple[int, int]:
    """The least depth the segment adds, and the least it reaches on the way, over its
    readings: as it is or decoded 1..n times; with `;params` cut before decoding or not; split
    on what decodes to a separator or not; each piece with its `;params` cut or not."""
    net = lowest = 1
    for text in _readings(segment):
        for pieces in ([text], _ANY_SEPARATOR.split(text)):
            depth = low = 0
            for piece in pieces:
                names = {piece, piece.partition(b";")[0]}
                if b".." in names:
                    depth -= 1
                elif not names & {b"", b"."}:
                    depth += 1
                low = min(low, depth)
            net, lowest = min(net, depth), min(lowest, low)
    return net, lowest


def _readings(segment: bytes) -> Iterator[bytes]:
    text = segment
    yield text
    for _ in range(DECODINGS):
        decoded = _OVERLONG.sub(_shortest, _ESCAPE.sub(_unescape, text))
        if decoded == text:
            break
        yield decoded
        text = decoded
    else:
        raise PathEscape(
            f"the request path leaves its target or hides it: encoded over {DECODINGS} times"
        )
    cut = segment.partition(b";")[0]  # Tomcat cuts path parameters before it decodes
    if cut != segment:
        yield from _readings(cut)


def _unescape(m: re.Match[bytes]) -> bytes:
    if m[1] is not None:
        return bytes((int(m[1], 16),))
    return chr(int(m[2], 16)).encode("utf-8", "surrogatepass")


def _shortest(m: re.Match[bytes]) -> bytes:
    """An overlong UTF-8 sequence for an ASCII character → that character; others as they are."""
    seq = m[0]
    value = seq[0] & 0x7F >> len(seq)  # 2 bytes: 5 bits of the lead; 3: 4; 4: 3
    for byte in seq[1:]:
        value = value << 6 | byte & 0x3F
    return bytes((value,)) if value < 0x80 else seq
