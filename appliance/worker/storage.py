"""Where job outputs go: a local directory or an S3-compatible bucket.

Objects are named `{job_id}/{name}` with both parts sanitised, so a hostile output name
(`../../etc/passwd`, NUL bytes, absolute paths) can never escape the job's prefix.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
#: Object names longer than this are cut (S3 allows 1024 bytes per key; filesystems 255 per component).
MAX_NAME_LEN = 200


# Defined here, the module that makes them; connectors re-export it from base (they import storage, never
# the other way).
@dataclass
class OutputFile:
    """One stored output (image, video, audio, ...); `url` or `path` says where it lives."""

    name: str
    url: str | None
    path: str | None
    content_type: str
    size: int
    node: str | None = None
    #: The output list it came from: images, gifs, videos, audio, text, files, ...
    kind: str = "files"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sanitize_name(name: str) -> str:
    """One safe path component: no separators, no leading dots, bounded length, never empty."""
    base = name.replace("\\", "/").split("/")[-1]
    cleaned = _UNSAFE.sub("_", base).lstrip(".")
    if len(cleaned) > MAX_NAME_LEN:
        stem, dot, ext = cleaned.rpartition(".")
        if dot and len(ext) <= 16:
            cleaned = stem[: MAX_NAME_LEN - len(ext) - 1] + "." + ext
        else:
            cleaned = cleaned[:MAX_NAME_LEN]
    return cleaned or "output"


def object_key(job_id: str, name: str, *, prefix: str = "") -> str:
    """`[prefix/]job_id/name`, each part sanitised."""
    key = f"{sanitize_name(job_id)}/{sanitize_name(name)}"
    clean_prefix = "/".join(sanitize_name(p) for p in prefix.split("/") if p not in ("", ".", ".."))
    return f"{clean_prefix}/{key}" if clean_prefix else key


class OutputStorage(ABC):
    """Stores one output and says where it now lives."""

    @abstractmethod
    async def put(
        self,
        job_id: str,
        name: str,
        data: bytes | Path,
        content_type: str,
        *,
        kind: str = "files",
        node: str | None = None,
    ) -> OutputFile:
        """Store bytes (or a file's content) as `{job_id}/{name}`; returns where it went."""

    async def close(self) -> None:
        """Release clients (no-op by default)."""
        return None


class LocalStorage(OutputStorage):
    """Files under a directory; `public_base_url` (e.g. served by nginx) makes URLs for them."""

    def __init__(self, directory: str | Path, public_base_url: str | None = None) -> None:
        self.directory = Path(directory)
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None

    async def put(
        self,
        job_id: str,
        name: str,
        data: bytes | Path,
        content_type: str,
        *,
        kind: str = "files",
        node: str | None = None,
    ) -> OutputFile:
        key = object_key(job_id, name)
        target = self.directory / key
        size = await asyncio.to_thread(self._write, target, data)
        url = f"{self.public_base_url}/{quote(key)}" if self.public_base_url else None
        return OutputFile(
            name=key, url=url, path=str(target), content_type=content_type, size=size, node=node, kind=kind
        )

    @staticmethod
    def _write(target: Path, data: bytes | Path) -> int:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write to a temp file and rename, so a reader never sees a half-written output. Created with mode
        # 0666 less the umask (not mkstemp's 0600): a web server serving public_base_url must read it.
        tmp = str(target.parent / f".partial-{secrets.token_hex(8)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            with os.fdopen(fd, "wb") as out:
                if isinstance(data, Path):
                    with data.open("rb") as src:
                        shutil.copyfileobj(src, out)
                else:
                    out.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target.stat().st_size


@dataclass
class S3Settings:
    """Where and how to upload; credentials fall back to boto3's usual chain when None."""

    bucket: str
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    prefix: str = ""
    #: When set, each OutputFile.url is a presigned GET valid this long; otherwise a plain object URL.
    presign_expires_s: int | None = 3600


class S3Storage(OutputStorage):
    """S3 or any S3-compatible store (MinIO, R2, Ceph); boto3 is blocking so it runs in a thread."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self._client: Any = None

    def _get_client(self) -> Any:
        if self._client is None:
            import boto3  # optional dependency: only S3 users need it
            from botocore.config import Config

            self._client = boto3.client(
                "s3",
                endpoint_url=self.settings.endpoint_url,
                region_name=self.settings.region or "us-east-1",
                aws_access_key_id=self.settings.access_key_id,
                aws_secret_access_key=self.settings.secret_access_key,
                config=Config(retries={"max_attempts": 3, "mode": "standard"}, signature_version="s3v4"),
            )
        return self._client

    async def put(
        self,
        job_id: str,
        name: str,
        data: bytes | Path,
        content_type: str,
        *,
        kind: str = "files",
        node: str | None = None,
    ) -> OutputFile:
        key = object_key(job_id, name, prefix=self.settings.prefix)
        size, url = await asyncio.to_thread(self._upload, key, data, content_type)
        return OutputFile(
            name=key, url=url, path=None, content_type=content_type, size=size, node=node, kind=kind
        )

    def _upload(self, key: str, data: bytes | Path, content_type: str) -> tuple[int, str]:
        client = self._get_client()
        body = data.read_bytes() if isinstance(data, Path) else data
        client.put_object(Bucket=self.settings.bucket, Key=key, Body=body, ContentType=content_type)
        if self.settings.presign_expires_s:
            url = client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.settings.bucket, "Key": key},
                ExpiresIn=self.settings.presign_expires_s,
            )
        else:
            url = f"{client.meta.endpoint_url.rstrip('/')}/{self.settings.bucket}/{quote(key)}"
        return len(body), url

    async def close(self) -> None:
        if self._client is not None:
            await asyncio.to_thread(self._client.close)
            self._client = None
