"""Small S3 chores for the tests, through the same client library imd uses."""

from __future__ import annotations

import obstore
from obstore.store import S3Store


def store(endpoint: str, bucket: str, access_key: str, secret_key: str) -> S3Store:
    return S3Store(
        bucket,
        config={
            "endpoint": endpoint,
            "access_key_id": access_key,
            "secret_access_key": secret_key,
            "region": "us-east-1",
            "virtual_hosted_style_request": False,
        },
        client_options={"allow_http": True},
    )


def ensure_bucket(endpoint: str, bucket: str, access_key: str, secret_key: str) -> None:
    """SeaweedFS creates a bucket on the first upload by an admin identity."""
    obstore.put(store(endpoint, bucket, access_key, secret_key), ".imd-ready", b"ready")
