"""A Firehose stand-in for the fault tests: moto's Firehose (DirectPut → S3) served over HTTP,
behind a TCP proxy the test can cut and restore.

moto's own `ThreadedMotoServer` needs Flask (`moto[server]`), which the test extras do not
install; so a werkzeug server (a moto dependency) hands each request to moto's Firehose
responder, the same handler moto's server would call. The S3 side is moto's in-process mock,
sharing the same backends: PutRecordBatch writes one S3 object per call, records concatenated.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import Any

from tapegate.tape import split_records
from tapegate.tape.codec import LEAF_MAGIC
from tests.capture import TcpProxy

REGION = "us-east-1"
BUCKET = "tapegate-fault-evidence"
# Fake credentials: the gateway's boto3 signs with them and moto accepts anything.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
}


class FirehoseStandIn:
    """moto's Firehose on 127.0.0.1:<port>, one DirectPut stream delivering to one S3 bucket."""

    def __init__(self, stream: str = "tapegate-fault-chunks") -> None:
        from moto import mock_aws
        from werkzeug.serving import WSGIRequestHandler, make_server

        self.stream = stream
        self._saved_env = {k: os.environ.get(k) for k in FAKE_AWS_ENV}
        os.environ.update(FAKE_AWS_ENV)  # this process's boto3 (into the mock) needs them too
        self._mock = mock_aws()
        self._mock.start()
        self._lock = threading.Lock()  # moto's backends are not written for concurrent callers

        class Handler(WSGIRequestHandler):
            # Keep-alive, as real Firehose allows: the gateway's connection pool then holds open
            # connections through the proxy, which stop() must reset.
            protocol_version = "HTTP/1.1"

            def log_request(self, *args: Any, **kwargs: Any) -> None:
                pass

        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True,
                                   request_handler=Handler)  # fmt: skip
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

        import boto3

        self.s3 = boto3.client("s3", region_name=REGION)
        self.s3.create_bucket(Bucket=BUCKET)
        boto3.client("firehose", region_name=REGION).create_delivery_stream(
            DeliveryStreamName=stream,
            DeliveryStreamType="DirectPut",
            ExtendedS3DestinationConfiguration={
                "RoleARN": "arn:aws:iam::123456789012:role/firehose",
                "BucketARN": f"arn:aws:s3:::{BUCKET}",
            },
        )

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        from botocore.exceptions import ClientError
        from moto.core.request import Request
        from moto.firehose.responses import FirehoseResponse

        request = Request(environ)
        with self._lock:
            try:
                status, headers, body = FirehoseResponse.dispatch(
                    request, request.raw_url, dict(request.headers)
                )
            except ClientError as exc:  # what moto's server does with one
                status, headers, body = 400, {}, exc.response["Error"]["Message"]
        data = body.encode() if isinstance(body, str) else bytes(body)
        skip = {"content-length", "server", "date", "connection"}
        head = [(k, str(v)) for k, v in headers.items() if k.lower() not in skip]
        start_response(f"{status} {HTTPStatus(status).phrase}",
                       [*head, ("Content-Length", str(len(data)))])  # fmt: skip
        return [data]

    def object_keys(self) -> list[str]:
        keys: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return sorted(keys)

    def delivered_records(self, leaves: bool = False) -> list[bytes]:
        """Every chunk delivered so far (with `leaves`, every log leaf), in no particular order
        (as with Firehose), duplicates included (delivery is at least once)."""
        records: list[bytes] = []
        for key in self.object_keys():
            body = self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            found, errors = split_records(body)
            assert not errors, f"{key}: {errors}"
            records += [r for r in found if (r[:4] == LEAF_MAGIC) == leaves]
        return records

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._mock.stop()
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def gateway_env(proxy: TcpProxy) -> dict[str, str]:
    """What `tapegate up` needs to reach the stand-in: boto3 (botocore >= 1.31) takes a
    service's endpoint from AWS_ENDPOINT_URL_<SERVICE>, so the gateway's code is unchanged."""
    return {**FAKE_AWS_ENV, "AWS_ENDPOINT_URL_FIREHOSE": proxy.endpoint}


def firehose_sink(stream: str, spool_dir: str, **extra: Any) -> dict[str, Any]:
    """The `sink:` section for the stand-in."""
    return {"kind": "firehose", "stream": stream, "region": REGION, "spool_dir": spool_dir,
            **extra}  # fmt: skip


@contextlib.contextmanager
def firehose_behind_proxy(
    stream: str = "tapegate-fault-chunks",
) -> Iterator[tuple[FirehoseStandIn, TcpProxy]]:
    standin = FirehoseStandIn(stream)
    proxy = TcpProxy(("127.0.0.1", standin.port))
    try:
        yield standin, proxy
    finally:
        proxy.close()
        standin.close()
