"""An S3 bucket served by moto's server on 127.0.0.1, for the tests of ``--storage s3://...``.

pyarrow (and so Tune, and every node of a cluster) reaches it over HTTP like any S3-compatible store (MinIO, Ceph):
the storage URI names the endpoint, the region and the test credentials in its query, so no environment variable
is needed and the search's Ray workers find it too.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest

CREDENTIALS = "testing:testing"
"""The access key and secret, in the URI's user part (the form pyarrow reads)."""


@contextlib.contextmanager
def moto_bucket(bucket: str = "sde-bucket") -> Iterator[str]:
    """Starts moto's S3 server with one empty bucket; yields ``s3://<bucket>/sde?endpoint_override=...``."""
    server_mod = pytest.importorskip("moto.server", reason="moto[s3] is a test dependency (make install)")
    boto3 = pytest.importorskip("boto3")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=bucket)
        yield f"s3://{CREDENTIALS}@{bucket}/sde?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    finally:
        server.stop()
