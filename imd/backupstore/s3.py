"""``s3://``: a backup target in an S3 bucket, through obstore (the Rust
``object_store`` crate: requests signed and sent off the GIL).

Configuration comes from the request's ``envs``, with Longhorn's names
(``util.SetupCredential`` and ``s3_service.go``):

====================== =====================================================
``AWS_ACCESS_KEY_ID``, the key pair; without one, requests go unsigned
``AWS_SECRET_ACCESS_KEY``
``AWS_ENDPOINTS``      the endpoint URL; else AWS's for the region
``AWS_CERT``           PEM certificates to trust besides the system's
``VIRTUAL_HOSTED_STYLE`` ``true``/``false``; by default path style with an
                       endpoint, virtual-hosted without (as Longhorn)
``HTTP_PROXY``,        a proxy, and the hosts that bypass it
``HTTPS_PROXY``,
``NO_PROXY``
====================== =====================================================

Nothing is taken from imd's own environment: the store is built with
every setting explicit and the credentials from a provider (obstore would
otherwise fill in ``AWS_SESSION_TOKEN``, ``AWS_SKIP_SIGNATURE`` and the
like from the process), and without a proxy in the request, the HTTP
client is given a placeholder proxy that excludes the endpoint's host,
which switches off the client's own reading of ``HTTP_PROXY`` (the only
way the client offers to do that). Secrets never reach a log or an error
message: messages are built from the operation, the path and the
server's answer.

Payloads are sent unsigned (``UNSIGNED-PAYLOAD``): every block carries its
own SHA-512 checksum, verified on every read, and production targets use
TLS; signing would hash each block a second time (SHA-256) for nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import BaseError, PermissionDeniedError, UnauthenticatedError
from obstore.store import S3Store

from imd.backupstore.driver import Buffer, FileInfo, StoreOptions
from imd.backupstore.urls import S3Target
from imd.errors import ImdError, InvalidArgument, NotFound, PermissionDenied, Unavailable

if TYPE_CHECKING:
    from obstore.store import S3Credential

log = logging.getLogger("imd.backupstore")

DEFAULT_REGION = "us-east-1"
# Where the placeholder proxy points: never used (its exclusions cover the
# endpoint), and on loopback if it ever were.
_NO_PROXY_PLACEHOLDER = "http://127.0.0.1:9"
DELETE_BATCH = 1000


class S3Config:
    """The request's settings, resolved; ``repr`` shows no secret."""

    def __init__(self, target: S3Target, envs: Mapping[str, str]) -> None:
        access = envs.get("AWS_ACCESS_KEY_ID", "").strip()
        secret = envs.get("AWS_SECRET_ACCESS_KEY", "").strip()
        if bool(access) != bool(secret):
            missing = "AWS_SECRET_ACCESS_KEY" if access else "AWS_ACCESS_KEY_ID"
            raise InvalidArgument(f"{missing} is missing (the key pair comes in twos)", field="envs")
        self._access = access
        self._secret = secret
        self.region = target.region or DEFAULT_REGION
        self.bucket = target.bucket
        endpoint = envs.get("AWS_ENDPOINTS", "").strip()
        virtual = envs.get("VIRTUAL_HOSTED_STYLE", "").strip()
        if virtual == "true":
            self.virtual_hosted = True
        elif virtual == "false":
            self.virtual_hosted = False
        else:
            self.virtual_hosted = not endpoint
        if endpoint:
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise InvalidArgument(f"AWS_ENDPOINTS {endpoint!r} is not an http(s) URL", field="envs")
            self.host = parts.hostname
            if self.virtual_hosted:
                # obstore wants the bucket in a virtual-hosted endpoint.
                endpoint = f"{parts.scheme}://{self.bucket}.{parts.netloc}{parts.path}".rstrip("/")
            self.endpoint = endpoint.rstrip("/")
        elif self.virtual_hosted:
            self.host = f"s3.{self.region}.amazonaws.com"
            self.endpoint = f"https://{self.bucket}.{self.host}"
        else:
            self.host = f"s3.{self.region}.amazonaws.com"
            self.endpoint = f"https://{self.host}"
        self.cert = envs.get("AWS_CERT", "")
        # As Go's http.ProxyFromEnvironment: the variable of the endpoint's scheme.
        scheme_proxy = "HTTPS_PROXY" if self.endpoint.startswith("https:") else "HTTP_PROXY"
        self.proxy = envs.get(scheme_proxy, "").strip()
        self.no_proxy = envs.get("NO_PROXY", "").strip()

    def __repr__(self) -> str:
        return f"S3Config(bucket={self.bucket!r}, region={self.region!r}, endpoint={self.endpoint!r})"

    @property
    def signed(self) -> bool:
        return bool(self._access)

    def credentials(self) -> S3Credential:
        return {"access_key_id": self._access, "secret_access_key": self._secret, "token": None, "expires_at": None}

    def store(self, options: StoreOptions, *, probe: bool = False) -> S3Store:
        connect = timedelta(seconds=options.connect_timeout_s)
        client: dict[str, Any] = {
            "allow_http": self.endpoint.startswith("http:"),
            "connect_timeout": connect,
            "timeout": timedelta(seconds=options.request_timeout_s),
        }
        if self.cert:
            client["root_certificate"] = self.cert
        if self.proxy:
            client["proxy_url"] = self.proxy
            if self.no_proxy:
                client["proxy_excludes"] = self.no_proxy
        else:
            client["proxy_url"] = _NO_PROXY_PLACEHOLDER
            client["proxy_excludes"] = f"{self.host},.{self.host}"
        config: dict[str, Any] = {
            "endpoint": self.endpoint,
            "region": self.region,
            "virtual_hosted_style_request": self.virtual_hosted,
            "skip_signature": not self.signed,
            "unsigned_payload": True,
            "request_payer": False,
            "s3_express": False,
        }
        if probe:
            # The first request: a target that cannot be reached fails
            # within about the connect timeout.
            retry = {
                "max_retries": 3,
                "retry_timeout": connect,
                "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": connect, "base": 2.0},
            }
        else:
            # Later ones ride out a busy or restarting server (5xx, resets),
            # as Longhorn's client does with its retries.
            retry = {
                "max_retries": 10,
                "retry_timeout": timedelta(seconds=options.retry_window_s),
                "backoff": {
                    "init_backoff": timedelta(milliseconds=200),
                    "max_backoff": timedelta(seconds=10),
                    "base": 2.0,
                },
            }
        provider = self.credentials if self.signed else None
        return S3Store(
            self.bucket,
            config=config,  # type: ignore[arg-type]
            client_options=client,  # type: ignore[arg-type]
            retry_config=retry,  # type: ignore[arg-type]
            credential_provider=provider,
        )


def _first_line(exc: BaseException) -> str:
    return str(exc).split("\n", 1)[0].strip()


def translate(exc: BaseException, what: str) -> ImdError:
    """An obstore failure as imd's error: 401/403 are PermissionDenied, a
    missing object NotFound, anything else (refused, timed out, 5xx)
    Unavailable, each with the server's reason."""
    message = _first_line(exc)
    if isinstance(exc, FileNotFoundError):
        return NotFound(f"{what}: not found on the backup target")
    if isinstance(exc, (PermissionDeniedError, UnauthenticatedError)) or any(
        code in message for code in ("status code: 403", "status code: 401")
    ):
        reason = _server_code(str(exc))
        return PermissionDenied(f"{what}: the S3 target refused the credentials ({reason})", field="backup_target")
    if "NoSuchBucket" in str(exc):
        return NotFound(f"{what}: the bucket does not exist", field="backup_target")
    return Unavailable(f"backup target: {what}: {message}")


def _server_code(text: str) -> str:
    for code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken"):
        if code in text:
            return code
    return "403 Forbidden" if "403" in text else "401 Unauthorized"


class S3Driver:
    def __init__(self, target: S3Target, config: S3Config, store: S3Store) -> None:
        self._target = target
        self._config = config
        self._store = store
        self._prefix = target.prefix.strip("/")

    @classmethod
    async def open(cls, target: S3Target, envs: Mapping[str, str], options: StoreOptions) -> S3Driver:
        config = S3Config(target, envs)
        try:
            probe = config.store(options, probe=True)
            store = config.store(options)
        except (BaseError, ValueError, TypeError) as exc:
            raise InvalidArgument(f"S3 settings: {_first_line(exc)}", field="envs") from None
        await cls(target, config, probe).listdir("")  # Longhorn's connection test
        return cls(target, config, store)

    @property
    def kind(self) -> str:
        return "s3"

    @property
    def url(self) -> str:
        return self._target.url

    def key(self, path: str) -> str:
        path = path.strip("/")
        if not self._prefix:
            return path
        return f"{self._prefix}/{path}" if path else self._prefix

    def _relative(self, key: str, base: str) -> str:
        return key[len(base) :].lstrip("/") if base else key

    async def read(self, path: str) -> Buffer:
        try:
            result = await obstore.get_async(self._store, self.key(path))
            # A view of the client's buffer: a 2 MiB block is not copied.
            return memoryview(await result.bytes_async())
        except (BaseError, OSError) as exc:
            raise translate(exc, path) from None

    async def write(self, path: str, data: Buffer) -> None:
        try:
            await obstore.put_async(self._store, self.key(path), data, use_multipart=False)
        except (BaseError, OSError) as exc:
            raise translate(exc, path) from None

    async def listdir(self, path: str) -> list[str]:
        base = self.key(path)
        try:
            result = await obstore.list_with_delimiter_async(self._store, base or None)
        except (BaseError, OSError) as exc:
            raise translate(exc, f"listing {path or '/'}") from None
        names = [self._relative(p, base) for p in result["common_prefixes"]]
        names += [self._relative(o["path"], base) for o in result["objects"]]
        return sorted(n for n in names if n)

    async def list_files(self, path: str) -> list[str]:
        base = self.key(path)
        found: list[str] = []
        try:
            async for batch in obstore.list(self._store, base or None, chunk_size=1000):
                found.extend(self._relative(meta["path"], base) for meta in batch)
        except (BaseError, OSError) as exc:
            raise translate(exc, f"listing {path or '/'}") from None
        return found

    async def remove(self, path: str) -> None:
        key = self.key(path)
        try:
            below = [f"{key}/{name}" for name in await self.list_files(path)]
            keys = [key, *below]
            for i in range(0, len(keys), DELETE_BATCH):
                await obstore.delete_async(self._store, keys[i : i + DELETE_BATCH])
        except FileNotFoundError:
            pass
        except (BaseError, OSError) as exc:
            raise translate(exc, f"removing {path}") from None

    async def remove_files(self, paths: list[str]) -> list[str]:
        failed = []
        for i in range(0, len(paths), DELETE_BATCH):
            batch = paths[i : i + DELETE_BATCH]
            try:
                await obstore.delete_async(self._store, [self.key(p) for p in batch])
            except FileNotFoundError:
                pass
            except (BaseError, OSError) as exc:
                log.warning("cannot delete %d objects from the backup target: %s", len(batch), _first_line(exc))
                failed.extend(batch)
        return failed

    async def stat(self, path: str) -> FileInfo | None:
        try:
            meta = await obstore.head_async(self._store, self.key(path))
        except FileNotFoundError:
            return None
        except (BaseError, OSError) as exc:
            raise translate(exc, path) from None
        return FileInfo(size=meta["size"], mtime=meta["last_modified"])

    async def close(self) -> None:
        return None
