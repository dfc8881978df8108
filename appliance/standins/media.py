"""Tiny real media encoders (stdlib only) so stand-in outputs are genuine PNG, GIF and WAV files."""

from __future__ import annotations

import io
import struct
import wave
import zlib
from dataclasses import dataclass


@dataclass
class Frame:
    """An RGB image: `pixels` is width*height*3 bytes, row-major."""

    width: int
    height: int
    pixels: bytes

    @classmethod
    def solid(cls, width: int, height: int, color: int) -> Frame:
        rgb = bytes(((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF))
        return cls(width, height, rgb * (width * height))

    def inverted(self) -> Frame:
        return Frame(self.width, self.height, bytes(255 - b for b in self.pixels))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def encode_png(frame: Frame) -> bytes:
    """8-bit RGB PNG, filter type 0 on every row."""
    stride = frame.width * 3
    raw = b"".join(b"\x00" + frame.pixels[y * stride : (y + 1) * stride] for y in range(frame.height))
    header = struct.pack(">IIBBBBB", frame.width, frame.height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


def decode_png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG; ValueError when it is not one."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _lzw_literals(indices: bytes) -> bytes:
    """GIF LZW data using only literal codes: 7-bit minimum code size, a clear code every 126 codes.

    Resetting before the decoder's table reaches 256 keeps every code 8 bits wide, so no real
    compression is needed to produce a valid stream.
    """
    clear, end = 128, 129
    codes: list[int] = []
    for i, index in enumerate(indices):
        if i % 126 == 0:
            codes.append(clear)
        codes.append(index & 0x7F)
    codes.append(end)
    out = bytearray()
    for code in codes:  # 8-bit codes pack to whole bytes, LSB first
        out.append(code)
    blocks = bytearray([7])
    for start in range(0, len(out), 255):
        chunk = out[start : start + 255]
        blocks += bytes([len(chunk)]) + chunk
    return bytes(blocks + b"\x00")


def encode_gif(frames: list[Frame], delay_cs: int = 10) -> bytes:
    """Animated GIF (looping); colours are quantised to 2 bits per channel in a 128-entry palette."""
    width, height = frames[0].width, frames[0].height
    palette = bytearray()
    for i in range(128):
        r, g, b = (i >> 4) & 3, (i >> 2) & 3, i & 3
        palette += bytes((r * 85, g * 85, b * 85))
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", width, height, 0xF6, 0, 0) + palette)
    out += b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    for frame in frames:
        px = frame.pixels
        indices = bytes(
            ((px[i] >> 6) << 4) | ((px[i + 1] >> 6) << 2) | (px[i + 2] >> 6) for i in range(0, len(px), 3)
        )
        out += b"\x21\xf9\x04\x00" + struct.pack("<H", delay_cs) + b"\x00\x00"
        out += b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
        out += _lzw_literals(indices)
    return bytes(out + b"\x3b")


def encode_wav(seconds: float, frequency: float = 440.0, rate: int = 8000) -> bytes:
    """Mono 16-bit PCM square wave."""
    count = int(seconds * rate)
    period = max(1, int(rate / frequency))
    samples = b"".join(
        struct.pack("<h", 8000 if (i // (period // 2 or 1)) % 2 else -8000) for i in range(count)
    )
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples)
    return buf.getvalue()
