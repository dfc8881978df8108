#!/usr/bin/env python3
"""Layer sizes and layer reuse between container images, from their archives (no daemon, no registry).

Reads docker-archive tarballs (`manifest.json` + config + layer tars: what `dockerTools.buildLayeredImage`
builds, `streamLayeredImage` scripts print, `docker save`/`skopeo copy docker-archive:` write) and OCI image
layout tarballs (`index.json` + `blobs/sha256/...`), plain or gzip/bzip2/xz compressed, in one streaming pass:
a multi-gigabyte stream is hashed as it goes by and never stored. An image is named `NAME=SOURCE`, SOURCE being
an archive path, `-` for stdin (`$(nix build --print-out-paths .#image-gpu) | layer_reuse.py gpu=-`), or a
summary JSON this script wrote earlier with `--summary-out`.

A layer is identified by its diff id (sha256 of the uncompressed layer tar, from the image config); two images
share a layer when they have the same diff id, which is what a registry and a local store deduplicate by.
Reported per image: layers, bytes (uncompressed layer sizes), and against the base image (the first one, or
`--base NAME`): layers and bytes shared with it. Over all images: the bytes stored once per distinct layer
versus the sum of the images' sizes (the seed's storage metric).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
import tarfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

#: Members read into memory (manifests, configs); anything larger is hashed and counted only.
SMALL = 4 * 1024 * 1024
CHUNK = 1024 * 1024


class ArchiveError(Exception):
    """The input is not an image archive this script understands; the message says what is wrong."""


@dataclass(frozen=True)
class Layer:
    digest: str  # "sha256:<hex>" diff id
    size: int  # bytes of the uncompressed layer tar


@dataclass
class Image:
    name: str
    config_digest: str  # "sha256:<hex>" of the config JSON: the image id, equal for equal images
    layers: list[Layer] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "config_digest": self.config_digest,
            "size": self.size,
            "layers": [asdict(layer) for layer in self.layers],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], name: str | None = None) -> Image:
        try:
            return cls(
                name or data["name"],
                data["config_digest"],
                [Layer(str(x["digest"]), int(x["size"])) for x in data["layers"]],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArchiveError(f"not a layer summary written by this script: {exc}") from None


@dataclass(frozen=True)
class Member:
    sha256: str
    size: int
    diff_id: str  # sha256 of the decompressed content (differs from sha256 for gzip-compressed OCI layers)
    data: bytes | None  # kept only for small members (JSON)


def _hash_stream(handle: IO[bytes], keep: bool) -> Member:
    raw = hashlib.sha256()
    size = 0
    chunks: list[bytes] = []
    plain: Any = None  # a hasher of the decompressed bytes, set when the first bytes say gzip
    inflater: Any = None
    while chunk := handle.read(CHUNK):
        if size == 0 and chunk[:2] == b"\x1f\x8b":
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            plain = hashlib.sha256()
        raw.update(chunk)
        if inflater is not None:
            plain.update(inflater.decompress(chunk))
        size += len(chunk)
        if keep and size <= SMALL:
            chunks.append(chunk)
    if inflater is not None:
        plain.update(inflater.flush())
    digest = "sha256:" + raw.hexdigest()
    diff_id = "sha256:" + plain.hexdigest() if plain is not None else digest
    return Member(digest, size, diff_id, b"".join(chunks) if keep and size <= SMALL else None)


def _open(source: str) -> tuple[IO[bytes], bool]:
    if source == "-":
        return sys.stdin.buffer, False
    path = Path(source)
    if not path.is_file():
        raise ArchiveError(f"{source}: no such file")
    return path.open("rb"), True


def read_archive(name: str, source: str) -> Image:
    """One pass over a docker-archive or OCI-layout tar (optionally compressed)."""
    handle, close = _open(source)
    members: dict[str, Member] = {}
    try:
        # "r|*": a non-seekable stream with transparent decompression; members are visited once, in order.
        with tarfile.open(fileobj=handle, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                extracted = tar.extractfile(info)
                if extracted is None:
                    continue
                # JSON (manifests, configs) and small OCI blobs (manifests are blobs there) are kept to parse.
                keep = info.name.endswith(".json") or (
                    info.name.lstrip("./").startswith("blobs/") and info.size <= SMALL
                )
                members[info.name.removeprefix("./")] = _hash_stream(extracted, keep)
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as exc:
        raise ArchiveError(f"{source}: not a readable tar archive: {exc}") from None
    finally:
        if close:
            handle.close()
    if "manifest.json" in members:
        return _docker_archive(name, source, members)
    if "index.json" in members:
        return _oci_layout(name, source, members)
    raise ArchiveError(f"{source}: neither manifest.json (docker-archive) nor index.json (OCI layout) found")


def _json(source: str, members: dict[str, Member], path: str) -> Any:
    member = members.get(path)
    if member is None or member.data is None:
        raise ArchiveError(f"{source}: {path} is missing or too large")
    try:
        return json.loads(member.data)
    except ValueError as exc:
        raise ArchiveError(f"{source}: {path} is not JSON: {exc}") from None


def _docker_archive(name: str, source: str, members: dict[str, Member]) -> Image:
    manifest = _json(source, members, "manifest.json")
    if not isinstance(manifest, list) or len(manifest) != 1:
        raise ArchiveError(
            f"{source}: manifest.json must list exactly one image (found "
            f"{len(manifest) if isinstance(manifest, list) else 'no list'})"
        )
    entry = manifest[0]
    config_path, layer_paths = entry.get("Config"), entry.get("Layers")
    if not isinstance(config_path, str) or not isinstance(layer_paths, list):
        raise ArchiveError(f"{source}: manifest.json lacks Config or Layers")
    config = _json(source, members, config_path)
    diff_ids = config.get("rootfs", {}).get("diff_ids") if isinstance(config, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(layer_paths):
        raise ArchiveError(
            f"{source}: config rootfs.diff_ids does not match the manifest's {len(layer_paths)} layers"
        )
    layers = []
    for path, diff_id in zip(layer_paths, diff_ids, strict=True):
        member = members.get(path)
        if member is None:
            raise ArchiveError(f"{source}: layer {path} named in manifest.json is not in the archive")
        if member.diff_id != diff_id:
            raise ArchiveError(
                f"{source}: layer {path} hashes to {member.diff_id}, the config says {diff_id}"
            )
        layers.append(Layer(diff_id, member.size))
    return Image(name, members[config_path].sha256, layers)


def _blob(source: str, members: dict[str, Member], digest: str) -> tuple[str, Member]:
    algo, _, hexdigest = digest.partition(":")
    path = f"blobs/{algo}/{hexdigest}"
    if path not in members:
        raise ArchiveError(f"{source}: blob {digest} is not in the archive")
    return path, members[path]


def _oci_layout(name: str, source: str, members: dict[str, Member]) -> Image:
    index = _json(source, members, "index.json")
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or len(manifests) != 1:
        raise ArchiveError(f"{source}: index.json must list exactly one manifest")
    manifest_path, _ = _blob(source, members, manifests[0]["digest"])
    manifest = _json(source, members, manifest_path)
    config_path, config_member = _blob(source, members, manifest["config"]["digest"])
    config = _json(source, members, config_path)
    diff_ids = config.get("rootfs", {}).get("diff_ids", [])
    descriptors = manifest.get("layers", [])
    if len(diff_ids) != len(descriptors):
        raise ArchiveError(f"{source}: config rootfs.diff_ids does not match the manifest's layers")
    layers = []
    for descriptor, diff_id in zip(descriptors, diff_ids, strict=True):
        _, member = _blob(source, members, descriptor["digest"])
        if member.diff_id != diff_id:
            raise ArchiveError(
                f"{source}: layer {descriptor['digest']} decompresses to {member.diff_id}, "
                f"the config says {diff_id}"
            )
        # Uncompressed size is not recorded for compressed blobs; the blob size is what a registry stores.
        layers.append(Layer(diff_id, member.size))
    return Image(name, config_member.sha256, layers)


def load(spec: str) -> Image:
    name, sep, source = spec.partition("=")
    if not sep or not name or not source:
        raise ArchiveError(
            f"{spec!r}: expected NAME=SOURCE (an archive path, '-' for stdin, or a summary .json)"
        )
    if source.endswith(".json") and source != "-":
        path = Path(source)
        if not path.is_file():
            raise ArchiveError(f"{source}: no such file")
        try:
            return Image.from_json(json.loads(path.read_text(encoding="utf-8")), name)
        except ValueError as exc:
            raise ArchiveError(f"{source}: not JSON: {exc}") from None
    return read_archive(name, source)


def reuse_report(images: list[Image], base: str | None = None) -> dict[str, Any]:
    """Per image: size and what it shares with the base; overall: bytes stored once vs. summed sizes."""
    if not images:
        raise ArchiveError("no images given")
    by_name = {image.name: image for image in images}
    if len(by_name) != len(images):
        raise ArchiveError("image names must be unique")
    base_image = by_name.get(base) if base else images[0]
    if base_image is None:
        raise ArchiveError(f"--base {base}: no image of that name (have: {', '.join(by_name)})")
    base_digests = {layer.digest for layer in base_image.layers}
    rows = []
    for image in images:
        shared = [layer for layer in image.layers if layer.digest in base_digests]
        rows.append(
            {
                "name": image.name,
                "config_digest": image.config_digest,
                "layers": len(image.layers),
                "bytes": image.size,
                "shared_layers": len(shared),
                "shared_bytes": sum(x.size for x in shared),
                "shared_ratio": (sum(x.size for x in shared) / image.size) if image.size else 0.0,
                "own_bytes": image.size - sum(x.size for x in shared),
            }
        )
    distinct: dict[str, int] = {}
    for image in images:
        for layer in image.layers:
            distinct[layer.digest] = layer.size
    total = sum(image.size for image in images)
    stored = sum(distinct.values())
    return {
        "base": base_image.name,
        "images": rows,
        "total_bytes": total,
        "stored_bytes": stored,
        "saved_ratio": (1 - stored / total) if total else 0.0,
    }


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{'image':<16} {'layers':>6} {'size':>11} {'shared with ' + report['base']:>22} {'own':>11}"]
    for row in report["images"]:
        shared = f"{row['shared_layers']} / {human(row['shared_bytes'])} ({row['shared_ratio']:.0%})"
        lines.append(
            f"{row['name']:<16} {row['layers']:>6} {human(row['bytes']):>11} {shared:>22} "
            f"{human(row['own_bytes']):>11}"
        )
    lines.append(
        f"stored once: {human(report['stored_bytes'])} of {human(report['total_bytes'])} summed "
        f"({report['saved_ratio']:.0%} saved by shared layers)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Layer sizes and reuse between image archives.")
    parser.add_argument(
        "images",
        nargs="+",
        metavar="NAME=SOURCE",
        help="archive path (.tar, .tar.gz), '-' for stdin (one image at most), or a summary .json",
    )
    parser.add_argument("--base", help="image the others are compared with (default: the first)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--summary-out",
        type=Path,
        metavar="DIR",
        help="also write NAME.json (digests and sizes of each image's layers) into DIR",
    )
    args = parser.parse_args(argv)
    try:
        if sum(spec.endswith("=-") for spec in args.images) > 1:
            raise ArchiveError("only one image can come from stdin")
        images = [load(spec) for spec in args.images]
        report = reuse_report(images, args.base)
    except ArchiveError as exc:
        print(f"layer_reuse: {exc}", file=sys.stderr)
        return 2
    if args.summary_out:
        args.summary_out.mkdir(parents=True, exist_ok=True)
        for image in images:
            (args.summary_out / f"{image.name}.json").write_text(
                json.dumps(image.to_json(), indent=1) + "\n", encoding="utf-8"
            )
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
