"""Byte-level damage to valid image files, shared by the fuzz tests: bit flips, interesting bytes
and integers in headers, truncation, insertion, deletion, duplicated slices and splices, and
format-aware damage (JPEG scans and PNG chunks repeated, TIFF tag types, counts and offsets)."""
from __future__ import annotations

import random
import struct
from collections.abc import Callable

INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)
INTERESTING_INTEGERS = (0, 1, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF)


def flip_bits(rng: random.Random, data: bytearray, others: list[bytes]) -> bytearray:
    for _ in range(rng.randint(1, 8)):
        position = rng.randrange(len(data))
        data[position] ^= 1 << rng.randrange(8)
    return data


def set_bytes(rng: random.Random, data: bytearray, others: list[bytes]) -> bytearray:
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(len(data))] = rng.choice(INTERESTING_BYTES)
    return data


def set_header_integer(rng: random.Random, data: bytearray, others: list[bytes]) -> bytearray:
    """Overwrite 2 or 4 bytes near the start, where formats keep their width, height and lengths."""
    form = rng.choice((">H", "<H", ">I", "<I"))
    value = rng.choice(INTERESTING_INTEGERS) & (0xFFFF if form.endswith("H") else 0xFFFFFFFF)
    position = rng.randrange(max(1, min(len(data), 64) - struct.calcsize(form)))
    data[position:position + struct.calcsize(form)] = struct.pack(form, value)
    return data


def truncate(rng: random.Random, data: bytearray, others: list[bytes]) -> bytearray:
    return data[: rng.randrange(len(data))]


def insert_random(rng: random.Random, data: bytearray, others: list[bytes]) -> bytearray:
    position = rng.randrange(len(data) + 1)
    return data[:position] + bytearray(rng.randbytes(rng.randint(1, 64))) + data[position:]


def delete_slice(rng: random.Random, data: bytearray, others: list[bytes]) -> bytearray:
    start = rng.randrange(len(data))
    return data[:start] + data[start + rng.randint(1, 256):]


def duplicate_slice(rng: random.Random, data: bytearray, others: list[bytes]) -> bytearray:
    start = rng.randrange(len(data))
    piece = data[start:start + rng.randint(1, 512)]
    position = rng.randrange(len(data) + 1)
    return data[:position] + piece + data[position:]


def splice(rng: random.Random, data: bytearray, others: list[bytes]) -> bytearray:
    """One format's head on another's tail."""
    other = rng.choice(others)
    return data[: rng.randrange(1, len(data) + 1)] + bytearray(other[rng.randrange(len(other)):])


MUTATIONS: list[Callable[[random.Random, bytearray, list[bytes]], bytearray]] = [
    flip_bits, set_bytes, set_header_integer, truncate, insert_random, delete_slice, duplicate_slice, splice,
]


def repeat_jpeg_scan(rng: random.Random, data: bytearray, others: list[bytes]) -> bytearray:
    """A JPEG's scan (SOS to the next marker) repeated up to 300 times: the stalled-decoder attack."""
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xDA]
    if not starts:
        return data
    start = rng.choice(starts)
    end = next((i for i in range(start + 2, len(data) - 1) if data[i] == 0xFF and data[i + 1] not in (0x00, 0xFF) and not 0xD0 <= data[i + 1] <= 0xD7), len(data))
    return data[:end] + data[start:end] * rng.choice((1, 2, 20, 120, 300)) + data[end:]


def png_chunks(data: bytearray) -> list[tuple[int, int]]:
    """(start, end) of each chunk after the signature, as far as the lengths hold."""
    chunks, position = [], 8
    while position + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, position)
        end = position + 12 + length
        if end > len(data):
            break
        chunks.append((position, end))
        position = end
    return chunks


def repeat_png_chunk(rng: random.Random, data: bytearray, others: list[bytes]) -> bytearray:
    chunks = png_chunks(data) if data.startswith(b"\x89PNG") else []
    if not chunks:
        return data
    start, end = rng.choice(chunks)
    return data[:end] + data[start:end] * rng.choice((1, 2, 50)) + data[end:]


def tiff_entry(rng: random.Random, data: bytearray, others: list[bytes]) -> bytearray:
    """One entry of a TIFF's first IFD given another type (FLOAT, RATIONAL...), count or value."""
    order = {b"II": "<", b"MM": ">"}.get(bytes(data[:2]))
    if order is None or len(data) < 8:
        return data
    (ifd,) = struct.unpack_from(order + "I", data, 4)
    if ifd + 2 > len(data):
        return data
    (count,) = struct.unpack_from(order + "H", data, ifd)
    entries = [ifd + 2 + 12 * i for i in range(count) if ifd + 14 + 12 * i <= len(data)]
    if not entries:
        return data
    entry = rng.choice(entries)
    field = rng.choice(("type", "count", "value"))
    if field == "type":
        struct.pack_into(order + "H", data, entry + 2, rng.choice((0, 1, 2, 3, 4, 5, 7, 9, 10, 11, 12, 13, 16, 17, 99)))
    else:
        struct.pack_into(order + "I", data, entry + (4 if field == "count" else 8), rng.choice(INTERESTING_INTEGERS))
    return data


FORMAT_MUTATIONS: list[Callable[[random.Random, bytearray, list[bytes]], bytearray]] = [repeat_jpeg_scan, repeat_png_chunk, tiff_entry]


def mutated_photo(rng: random.Random, seeds: list[bytes], mutations: list = MUTATIONS) -> bytes:
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, 4)):
        if data:
            data = rng.choice(mutations)(rng, data, seeds)
    return bytes(data)


