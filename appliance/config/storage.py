"""The `storage` section: where job outputs go (a local directory or an S3 bucket)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator

from appliance.config.section import Section
from appliance.secrets import credential_name, read_secret


class S3Settings(Section):
    bucket: str | None = Field(default=None, description="Bucket for job outputs.")
    endpoint_url: str | None = Field(
        default=None, description="S3 endpoint (MinIO, R2, ...); unset uses AWS."
    )
    region: str | None = Field(default=None, description="S3 region.")
    prefix: str = Field(default="", description="Key prefix for outputs.")
    access_key_id: str | None = Field(
        default=None, description="Access key id; unset uses the SDK's credential chain."
    )
    secret_access_key: SecretStr | None = Field(
        default=None,
        description="Secret access key. Prefer the file or the `s3-secret-access-key` credential.",
    )
    secret_access_key_file: Path | None = Field(
        default=None, description="File holding the secret access key."
    )
    presign_expiry_s: int = Field(
        default=3600, gt=0, description="Lifetime of presigned output URLs, in seconds."
    )
    public_base_url: str | None = Field(
        default=None,
        description="Public URL prefix of the bucket; when set, output "
        "URLs are built from it instead of presigned.",
    )

    def resolve_secret_access_key(self, env: Any = os.environ) -> str | None:
        return read_secret(
            credential_name("storage.s3.secret_access_key"),
            file=self.secret_access_key_file,
            inline=self.secret_access_key,
            env=env,
        )


class StorageSettings(Section):
    backend: Literal["local", "s3"] = Field(default="local", description="Where job outputs are stored.")
    local_dir: Path = Field(
        default=Path("/var/lib/appliance/outputs"),
        description="Output directory of the local backend. Files get mode 0666 less the worker's umask: "
        "0644 under umask 022; under the units' UMask=0027, 0640 for the `appliance` group, so add the web "
        "server serving `public_base_url` to that group.",
    )
    s3: S3Settings = Field(default_factory=S3Settings, description="S3 backend.")

    @model_validator(mode="after")
    def _s3_needs_bucket(self) -> StorageSettings:
        if self.backend == "s3" and not self.s3.bucket:
            raise ValueError("storage.backend is s3 but storage.s3.bucket is not set")
        return self
