"""Output storage: local directory and S3 (against a real moto_server process on loopback)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.worker.storage import LocalStorage, S3Settings, S3Storage, object_key, sanitize_name


def test_names_are_sanitised() -> None:
    assert object_key("job-1", "../../etc/passwd") == "job-1/passwd"
    assert object_key("../j", "a b\x00c.png") == "j/a_b_c.png"
    assert sanitize_name("...") == "output"
    long = sanitize_name("x" * 500 + ".png")
    assert len(long) <= 200 and long.endswith(".png")
    assert object_key("j", "f.txt", prefix="outs/../x") == "outs/x/j/f.txt"


async def test_local_storage_bytes_and_path(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "out", public_base_url="https://cdn.example/out/")
    stored = await storage.put("job 1", "img.png", b"\x89PNG data", "image/png", kind="images", node="9")
    assert _read(stored.path) == b"\x89PNG data"
    assert stored.url == "https://cdn.example/out/job_1/img.png" and stored.size == 9
    assert (stored.kind, stored.node) == ("images", "9")
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 1000)
    again = await storage.put("job 1", "img.png", src, "application/octet-stream")
    assert _read(again.path) == b"x" * 1000  # replaced atomically
    assert [p.name for p in (tmp_path / "out" / "job_1").iterdir()] == ["img.png"]  # no partial files left


def _read(path: str | None) -> bytes:
    assert path is not None
    return Path(path).read_bytes()


def _get(url: str | None) -> tuple[bytes, str]:
    assert url is not None
    with urllib.request.urlopen(url) as resp:
        return resp.read(), resp.headers["Content-Type"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    binary = shutil.which("moto_server")
    if binary is None:
        pytest.fail("moto_server not installed: pip install 'moto[server]'")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):  # wait for it to listen (start-up time, not a timed assertion)
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("moto_server exited")
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait()


async def test_s3_upload_and_presigned_get(moto_url: str, tmp_path: Path) -> None:
    import boto3

    settings = S3Settings(
        bucket="outputs",
        endpoint_url=moto_url,
        region="us-east-1",
        access_key_id="test",
        secret_access_key="test",
        prefix="appliance",
    )
    boto3.client(
        "s3",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    ).create_bucket(Bucket="outputs")
    storage = S3Storage(settings)
    stored = await storage.put("job-9", "../a.png", b"PNGDATA", "image/png", kind="images")
    assert stored.name == "appliance/job-9/a.png" and stored.size == 7 and stored.path is None
    body, ctype = await asyncio.to_thread(_get, stored.url)  # the presigned URL works without credentials
    assert body == b"PNGDATA" and ctype == "image/png"
    src = tmp_path / "v.gif"
    src.write_bytes(b"GIF89a...")
    plain = S3Storage(S3Settings(**{**settings.__dict__, "presign_expires_s": None}))
    stored2 = await plain.put("job-9", "v.gif", src, "image/gif")
    assert stored2.url == f"{moto_url}/outputs/appliance/job-9/v.gif"
    await storage.close()
    await plain.close()


async def test_s3_missing_bucket_raises(moto_url: str) -> None:
    storage = S3Storage(
        S3Settings(
            bucket="no-such-bucket", endpoint_url=moto_url, access_key_id="test", secret_access_key="test"
        )
    )
    with pytest.raises(Exception, match="NoSuchBucket"):
        await storage.put("j", "x", b"1", "text/plain")
    await storage.close()


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
async def test_local_outputs_are_readable_per_umask(tmp_path: Path, umask: int, mode: int) -> None:
    # A web server serving public_base_url runs as another user: outputs get 0666 less the umask, not 0600.
    storage = LocalStorage(tmp_path / "out")
    old = os.umask(umask)
    try:
        stored = await storage.put("j", "img.png", b"data", "image/png")
        src = tmp_path / "src.bin"
        src.write_bytes(b"x")
        copied = await storage.put("j", "copy.bin", src, "application/octet-stream")
    finally:
        os.umask(old)
    assert stored.path is not None and copied.path is not None
    assert stat.S_IMODE(os.stat(stored.path).st_mode) == mode
    assert stat.S_IMODE(os.stat(copied.path).st_mode) == mode
