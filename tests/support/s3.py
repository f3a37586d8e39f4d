"""A real S3 endpoint for tests: moto's server on 127.0.0.1, spoken to over HTTP by boto3.

    from tests.support.s3 import s3_env, s3_server

    def test_upload(s3_server, s3_env):
        bucket = s3_server.bucket()          # a fresh, uniquely named bucket
        client = s3_server.client()
        ...

moto keeps its state per process, not per server, so two servers in one
test process would share buckets: tests isolate themselves with unique
bucket names (`bucket()`), and `reset()` (moto's `/moto-api/reset`) is there
for a module that wants a clean slate. moto 5.2 stores checksums but never
validates them, and accepts any credentials.
"""

from __future__ import annotations

import logging
import urllib.request
import uuid
from dataclasses import dataclass

import pytest

ACCESS_KEY = "AKIASFTJOBTESTKEY000"
SECRET_KEY = "sftjob-test-secret-key-not-a-real-one"
REGION = "us-east-1"


@dataclass
class S3Server:
    """A running moto server: its endpoint URL and helpers to talk to it."""

    endpoint: str
    region: str = REGION

    def env(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> dict[str, str]:
        """Environment variables under which boto3's default chain finds these dummy credentials, and nothing else."""
        return {
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_DEFAULT_REGION": self.region,
            # Never fall back to the developer's own profile or the EC2 metadata service.
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self, **kwargs):
        """A boto3 S3 client for this endpoint, with explicit dummy credentials (the environment is not needed).

        It comes from a session of its own, so event handlers a test puts on
        boto3's default session see only the code under test.
        """
        import boto3

        kwargs.setdefault("aws_access_key_id", ACCESS_KEY)
        kwargs.setdefault("aws_secret_access_key", SECRET_KEY)
        return boto3.session.Session().client("s3", endpoint_url=self.endpoint, region_name=self.region, **kwargs)

    def bucket(self, stem: str = "test") -> str:
        """Create a bucket with a name no other test uses, and return the name."""
        name = f"{stem}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def reset(self) -> None:
        """Forget every bucket and object on the server (moto's /moto-api/reset)."""
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 (random port) for the whole session; skipped when moto is not installed."""
    server_mod = pytest.importorskip("moto.server", reason="moto[server] is needed for the S3 tests")
    # One INFO line per request drowns the output of a failing test.
    access_log = logging.getLogger("werkzeug")
    level = access_log.level
    access_log.setLevel(logging.WARNING)
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(endpoint=f"http://{host}:{port}")
    finally:
        server.stop()
        access_log.setLevel(level)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Put the server's dummy credentials in the environment for one test; returns them as a dict."""
    env = s3_server.env()
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env
