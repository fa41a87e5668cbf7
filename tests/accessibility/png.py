"""Read a screenshot: a PNG decoder for 8-bit RGB(A) images (what Chromium writes). Pure."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Image", "read_png"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Image:
    width: int
    height: int
    pixels: npt.NDArray[np.uint8]  # height x width x 3 (RGB)

    def colours(self) -> int:
        """How many distinct colours the image has."""
        packed = (
            self.pixels[..., 0].astype(np.uint32) << 16
            | self.pixels[..., 1].astype(np.uint32) << 8
            | self.pixels[..., 2].astype(np.uint32)
        )
        return int(np.unique(packed).size)

    def share_of(self, rgb: tuple[int, int, int], tolerance: int = 8) -> float:
        """The share of pixels within `tolerance` of the colour `rgb`."""
        distance = np.abs(self.pixels.astype(np.int16) - np.array(rgb, dtype=np.int16)).max(axis=2)
        return float((distance <= tolerance).mean())


def read_png(data: bytes) -> Image:
    if data[:8] != _SIGNATURE:
        raise ValueError("not a PNG file")
    position, chunks, header = 8, [], b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        elif kind == b"IEND":
            break
        position += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if depth != 8 or colour not in (2, 6) or interlace != 0:
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {colour}")
    channels = 3 if colour == 2 else 4
    stride = width * channels
    raw = np.frombuffer(zlib.decompress(b"".join(chunks)), dtype=np.uint8)
    rows = raw.reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    previous = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        method, line = int(rows[y, 0]), rows[y, 1:].astype(np.int32)
        if method == 0:
            current = line
        elif method == 1:  # Sub: a running sum per channel
            current = (
                np.cumsum(line.reshape(width, channels), axis=0).reshape(stride) & 0xFF
            ).astype(np.int32)
        elif method == 2:  # Up
            current = (line + previous) & 0xFF
        else:  # Average, Paeth: each byte depends on the one to its left
            current = _sequential(method, line, previous, channels)
        out[y] = current.astype(np.uint8)
        previous = current
    pixels = out.reshape(height, width, channels)[..., :3].copy()
    return Image(width, height, pixels)


def _sequential(
    kind: int, line: npt.NDArray[np.int32], previous: npt.NDArray[np.int32], channels: int
) -> npt.NDArray[np.int32]:
    if kind not in (3, 4):
        raise ValueError(f"unknown PNG filter {kind}")
    values = line.tolist()
    above = previous.tolist()
    result = [0] * len(values)
    for i, value in enumerate(values):
        left = result[i - channels] if i >= channels else 0
        up = above[i]
        if kind == 3:
            result[i] = (value + (left + up) // 2) & 0xFF
            continue
        corner = above[i - channels] if i >= channels else 0
        estimate = left + up - corner
        pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
        predictor = left if pa <= pb and pa <= pc else (up if pb <= pc else corner)
        result[i] = (value + predictor) & 0xFF
    return np.array(result, dtype=np.int32)
