"""What a JPEG will cost to decode, read from its markers before any pixel is decoded.

A progressive JPEG is drawn in scans, and the decoder passes over every block of a scan's
components once per scan, whatever the scan holds: a scan that refines nothing costs ~100 bytes
of file and a pass over the whole image (0.08 s at 64 megapixels). Counting scans from the bytes
bounds that work. A progressive (or multi-scan) JPEG also makes libjpeg hold the coefficients of
the whole image at full size, 2 bytes each, which decoding at reduced size (`draft`) cannot shrink.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass

SOI, EOI, SOS = 0xD8, 0xD9, 0xDA
# Start-of-frame markers (not DHT 0xC4, JPG 0xC8, DAC 0xCC); progressive ones are 0xC2, 0xC6, 0xCA, 0xCE.
FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
PROGRESSIVE_MARKERS = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
STANDALONE_MARKERS = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn and TEM carry no length
# In entropy-coded data 0xFF is followed by 0x00 (a stuffed byte), RSTn or more 0xFF (fill): anything else is a marker.
NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
BYTES_PER_COEFFICIENT = 2  # libjpeg's JCOEF


@dataclass(frozen=True)
class JpegLayout:
    """A JPEG's first frame as its markers describe it."""

    progressive: bool
    component_samples: dict[int, int]  # component id -> samples at full size, whole 8 x 8 blocks
    scans: int
    scan_samples: int  # over all scans, the samples of the components each scan covers: the decoder's passes

    @property
    def coefficient_bytes(self) -> int:
        """The full-size coefficient buffer libjpeg keeps for a progressive or multi-scan JPEG, else 0."""
        if not self.progressive and self.scans <= 1:
            return 0
        return BYTES_PER_COEFFICIENT * sum(self.component_samples.values())


def _component_samples(frame: bytes, size: tuple[int, int]) -> dict[int, int]:
    """Samples per component (whole 8 x 8 blocks) from an SOF segment after its length, scaled by sampling factors."""
    count = frame[5] if len(frame) > 5 else 0
    entries = [frame[6 + 3 * i : 9 + 3 * i] for i in range(count) if len(frame) >= 9 + 3 * i]
    if not entries:
        return {}
    factors = {entry[0]: (max(1, entry[1] >> 4), max(1, entry[1] & 0x0F)) for entry in entries}
    most_h = max(h for h, _ in factors.values())
    most_v = max(v for _, v in factors.values())
    width, height = size

    def blocks(length: int, factor: int, most: int) -> int:
        return -(-(-(-length * factor // most)) // 8)  # ceil(ceil(length * factor / most) / 8)

    return {ident: 64 * blocks(width, h, most_h) * blocks(height, v, most_v) for ident, (h, v) in factors.items()}


def read_jpeg_layout(data, size: tuple[int, int]) -> JpegLayout:
    """Walk the markers of a JPEG's first image (bytes, bytearray or mmap) up to its EOI or its end.

    `size` is the frame's (width, height) as Pillow read it. Damaged structure ends the walk early:
    the decoder would stop there too, so what was counted is what it would do.
    """
    position, end = 2, len(data)
    progressive, samples, scans, scan_samples = False, {}, 0, 0
    while position + 4 <= end:
        if data[position] != 0xFF:
            break
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker == EOI:
            break
        if marker in STANDALONE_MARKERS or marker == SOI:
            position += 2
            continue
        (length,) = struct.unpack_from(">H", data, position + 2)
        segment = bytes(data[position + 4 : position + 2 + length])
        position += 2 + length
        if marker in FRAME_MARKERS and not samples:
            progressive = marker in PROGRESSIVE_MARKERS
            samples = _component_samples(segment, size)
        elif marker == SOS:
            scans += 1
            count = segment[0] if segment else 0
            scan_samples += sum(samples.get(segment[1 + 2 * i], 0) for i in range(count) if 1 + 2 * i < len(segment))
            found = NEXT_MARKER.search(data, position)  # skip the scan's entropy-coded data
            if found is None:
                break
            position = found.start()
    return JpegLayout(progressive, samples, scans, scan_samples)
