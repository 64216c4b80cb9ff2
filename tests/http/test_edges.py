"""HTTP edges with a real upstream: paths that leave their target, header spellings of the
credential, an upstream that echoes the credential, a bearer token in the query."""

from __future__ import annotations

import gzip
import json
from typing import Any

import httpx
import pytest

from tests.gateway_harness import RunningGateway
from tests.http.conftest import raw_exchange
from tests.http_upstream import API_KEY, HttpUpstream


def _raw(gw: RunningGateway, target: str, headers: str = "") -> bytes:
    """One request with exactly this request-target (httpx would resolve the dots itself)."""
    return raw_exchange(gw, f"GET {target} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer "
                        f"{gw.token()}\r\n{headers}Connection: close\r\n\r\n".encode())  # fmt: skip


def _all_events(gw: RunningGateway) -> list[dict[str, Any]]:
    return [e for events in gw.events().values() for e in events]


ESCAPES = [
    "/api/../admin/items",
    "/api/v1/../../admin/items",
    "/api/%2e%2e/admin/items",
    "/api/..%2fadmin/items",
    "/api/..%2Fadmin%2Fitems",
    "/api/v1\\..\\..\\admin/items",
    "/api/v1/%2E%2E%5C%2e%2e%5Cadmin/items",
    # Readings only some servers make: Tomcat and Spring's path parameters, a path decoded
    # twice, IIS's %u escapes, overlong UTF-8 (lenient decoders), and all of them nested.
    "/api/..;/admin/items",
    "/api/v1/..;jsessionid=1/..;/admin/items",
    "/api/%252e%252e/admin/items",
    "/api/..%252fadmin/items",
    "/api/%u002e%u002e/admin/items",
    "/api/%c0%ae%c0%ae/admin/items",
    "/api/v1%c0%af..%c0%af..%c0%afadmin/items",
    "/api/%e0%80%ae%e0%80%ae/admin/items",
    "/api/%25252525252e%25252525252e/admin/items",
]


@pytest.mark.parametrize("target", ESCAPES)
def test_a_path_that_leaves_its_target_is_refused(
    hgw: RunningGateway, upstream: HttpUpstream, target: str
) -> None:
    before = len(upstream.seen)
    reply = _raw(hgw, target)
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    assert b"leaves its target" in reply
    assert len(upstream.seen) == before, "nothing reached the upstream"
    refusals = [e["attrs"] for e in _all_events(hgw) if e["type"] == "auth"]
    assert any(r.get("refusal") == "path_escape" for r in refusals), refusals


def test_dot_segments_that_stay_inside_are_resolved(hgw: RunningGateway,
                                                    upstream: HttpUpstream) -> None:  # fmt: skip
    reply = _raw(hgw, "/api/v1/./x/%2e%2e/items")
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert upstream.seen[-1]["path"] == "/base/v1/items"


@pytest.mark.parametrize("target", ["/api/v1/..;/items", "/api/v1/%252e%252e/items"])
def test_wide_readings_that_stay_inside_are_forwarded_as_sent(
    hgw: RunningGateway, upstream: HttpUpstream, target: str
) -> None:
    # Whichever way the upstream reads them, they stay inside: the gateway rewrites nothing.
    reply = _raw(hgw, target)
    assert b"leaves its target" not in reply, reply[:200]
    assert upstream.seen[-1]["path"] == "/base" + target.removeprefix("/api")


def test_other_spellings_of_the_credential_header_are_dropped(
    hgw: RunningGateway, upstream: HttpUpstream
) -> None:
    reply = _raw(hgw, "/api/items", "X_Api_Key: forged\r\nx-api-key: forged-too\r\n")
    assert reply.startswith(b"HTTP/1.1 200")
    seen = {k.lower(): v for k, v in upstream.seen[-1]["headers"].items()}
    assert seen["x-api-key"] == API_KEY and "x_api_key" not in seen
    assert "forged" not in json.dumps(upstream.seen[-1]["headers"])


def test_an_echoed_credential_is_masked_for_the_client_and_the_recording(
    hgw: RunningGateway,
) -> None:
    with httpx.Client(base_url=hgw.base, timeout=30,  # type: ignore[attr-defined]
                      headers={"Authorization": f"Bearer {hgw.token()}"}) as client:  # fmt: skip
        reply = client.get("/api/reflect")
    assert reply.status_code == 200
    stars = "*" * len(API_KEY)
    assert reply.headers["x-seen-key"] == stars
    assert reply.json()["you_sent"] == stars and reply.json()["again"] == stars
    assert API_KEY not in reply.text
    (sid, events), *_ = [(s, e) for s, e in hgw.events().items()
                         if any(x["type"] == "response" for x in e)]  # fmt: skip
    response = next(e["attrs"] for e in events if e["type"] == "response")
    assert response["credential_masked"] == 3  # the header and twice in the body
    frames = b"".join(f.data for f in hgw.frames(sid))
    assert stars.encode() in frames, "the recording holds the reply as the client saw it"
    assert API_KEY.encode() not in frames
    assert API_KEY not in json.dumps(events)


def test_a_compressed_echo_cannot_be_masked_and_says_so(hgw: RunningGateway) -> None:
    with httpx.Client(base_url=hgw.base, timeout=30,  # type: ignore[attr-defined]
                      headers={"Authorization": f"Bearer {hgw.token()}"}) as client:  # fmt: skip
        reply = client.get("/api/reflect-gzip")
    assert reply.headers["x-seen-key"] == "*" * len(API_KEY)  # headers still are
    assert reply.json()["you_sent"] == API_KEY  # the documented limit: not inside gzip
    response = next(e["attrs"] for e in _all_events(hgw) if e["type"] == "response")
    assert "not checked for the credential" in response["unmasked"]
    assert gzip  # the upstream compressed it


def test_a_bearer_token_in_the_query_is_removed(hgw: RunningGateway,
                                                upstream: HttpUpstream) -> None:  # fmt: skip
    reply = _raw(hgw, "/api/items?a=1&access_token=leaked-secret&b=2")
    assert reply.startswith(b"HTTP/1.1 200")
    assert upstream.seen[-1]["path"] == "/base/items?a=1&b=2"
    assert "leaked-secret" not in json.dumps(_all_events(hgw))
    sessions = hgw.sessions()
    assert sessions
    for sid in sessions:
        assert b"leaked-secret" not in b"".join(f.data for f in hgw.frames(sid))
