"""WalB compression ids 0-5 and their codecs.

The ids are the on-disk values of walb-tools (``walb_diff.h``), which differ from the
numbering of walb-tools' Python library (that one is only a string mapping):

====  ======  ====================================================================
 id   name    algorithm as WalB runs it
====  ======  ====================================================================
 0    none    bytes as they are
 1    gzip    a zlib stream (RFC 1950, ``compress2``); level 0 means 6
 2    snappy  one raw snappy block, not framed
 3    lzma    an .xz container, CRC64 check (``lzma_easy_buffer_encode``); level 0 means 6
 4    lz4     one LZ4 block (``LZ4_compress_default``), not a frame
 5    zstd    one zstd frame (``ZSTD_compress``); level 0 means 1
====  ======  ====================================================================

Writers fall back to id 0 when compression does not make the data smaller. lz4 is
walbops' default; snappy and zstd need the ``snappy`` and ``zstd`` extras.
"""

from __future__ import annotations

import enum
import lzma
import zlib
from dataclasses import dataclass
from typing import Any

import lz4.block

from ..errors import BadField, CompressionError, MissingExtra


class Compression(enum.IntEnum):
    """On-disk compression id of a diff record."""

    NONE = 0
    GZIP = 1
    SNAPPY = 2
    LZMA = 3
    LZ4 = 4
    ZSTD = 5


# Highest level per codec. lzma stops at 6: WalB's xz decoder has a 16 MiB memory
# limit that the dictionaries of levels 7-9 exceed. lz4 and snappy ignore the level.
MAX_LEVEL = {
    Compression.NONE: 9, Compression.GZIP: 9, Compression.SNAPPY: 9,
    Compression.LZMA: 6, Compression.LZ4: 9, Compression.ZSTD: 19,
}
# The xz decoder's memory limit in walb-tools [bytes].
_LZMA_MEMLIMIT = 16 << 20


def _optional(module: str, extra: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise MissingExtra(
            f"{module} is not installed: install walbops with the '{extra}' extra (pip install 'walbops[{extra}]')"
        ) from exc


def _snappy() -> Any:
    return _optional("cramjam", "snappy").snappy


def _zstd() -> Any:
    return _optional("zstandard", "zstd")


@dataclass(frozen=True)
class CompressOpt:
    """A compression choice in walb-tools' ``type:level:numCpu`` form."""

    kind: Compression = Compression.LZ4
    level: int = 0
    num_cpu: int = 1

    @classmethod
    def parse(cls, text: str) -> "CompressOpt":
        """Parse ``type[:level[:numCpu]]``, e.g. ``snappy:0:1`` or ``lz4``."""
        fields = text.split(":")
        if not 1 <= len(fields) <= 3:
            raise BadField(f"compression option {text!r}: expected type:level:numCpu")
        try:
            kind = Compression[fields[0].upper()]
        except KeyError:
            names = "|".join(c.name.lower() for c in Compression)
            raise BadField(f"compression option {text!r}: unknown type {fields[0]!r} (expected {names})") from None
        try:
            level = int(fields[1]) if len(fields) > 1 else 0
            num_cpu = int(fields[2]) if len(fields) > 2 else 1
        except ValueError:
            raise BadField(f"compression option {text!r}: level and numCpu must be integers") from None
        if not 0 <= level <= MAX_LEVEL[kind]:
            raise BadField(f"compression option {text!r}: {kind.name.lower()} level must be 0..{MAX_LEVEL[kind]}")
        if num_cpu < 1:
            raise BadField(f"compression option {text!r}: numCpu must be >= 1")
        return cls(kind, level, num_cpu)

    def __str__(self) -> str:
        return f"{self.kind.name.lower()}:{self.level}:{self.num_cpu}"


def compress_exact(kind: Compression, data: bytes | memoryview, level: int = 0) -> bytes:
    """Compress ``data`` with ``kind``, with no fallback to raw."""
    if not 0 <= level <= MAX_LEVEL.get(kind, 0):
        raise BadField(f"{Compression(kind).name.lower()} level {level} is out of 0..{MAX_LEVEL.get(kind, 0)}")
    if kind == Compression.NONE:
        return bytes(data)
    if kind == Compression.LZ4:
        return lz4.block.compress(data, mode="default", store_size=False)
    if kind == Compression.SNAPPY:
        return bytes(_snappy().compress_raw(bytes(data)))
    if kind == Compression.GZIP:
        return zlib.compress(data, level or 6)
    if kind == Compression.LZMA:
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=level or 6)
    if kind == Compression.ZSTD:
        return _zstd().ZstdCompressor(level=level or 1).compress(data)
    raise BadField(f"unknown compression id {int(kind)}")


def compress(kind: Compression, data: bytes | memoryview, level: int = 0) -> tuple[Compression, bytes]:
    """Compress with ``kind``; fall back to NONE when that is not smaller.

    Returns:
        The id actually used and the stored bytes.
    """
    if kind != Compression.NONE:
        packed = compress_exact(kind, data, level)
        if len(packed) < len(data):
            return kind, packed
    return Compression.NONE, bytes(data)


def decompress(kind: int, data: bytes | memoryview, expected_size: int) -> bytes:
    """Decompress ``data`` stored with id ``kind`` into exactly ``expected_size`` bytes.

    Raises:
        CompressionError: the data is corrupt or does not give ``expected_size`` bytes.
        BadField: ``kind`` is not a WalB compression id.
    """
    try:
        kind = Compression(kind)
    except ValueError:
        raise BadField(f"unknown compression id {kind}") from None
    try:
        out = _decompress(kind, data, expected_size)
    except (CompressionError, MissingExtra):
        raise
    except Exception as exc:  # each codec raises its own error type for corrupt input
        raise CompressionError(f"{kind.name.lower()} image does not decompress: {exc}") from exc
    if len(out) != expected_size:
        raise CompressionError(
            f"{kind.name.lower()} image decompresses to {len(out)} bytes, expected {expected_size}"
        )
    return out


def _decompress(kind: Compression, data: bytes | memoryview, expected_size: int) -> bytes:
    if kind == Compression.NONE:
        return bytes(data)
    if kind == Compression.LZ4:
        return lz4.block.decompress(data, uncompressed_size=expected_size)
    if kind == Compression.SNAPPY:
        # The raw block starts with its uncompressed length (a varint): check it
        # before letting the codec allocate.
        claimed = _snappy_length(data)
        if claimed != expected_size:
            raise CompressionError(f"snappy image claims {claimed} bytes, expected {expected_size}")
        return bytes(_snappy().decompress_raw(bytes(data)))
    if kind == Compression.GZIP:
        inflater = zlib.decompressobj()
        out = inflater.decompress(data, expected_size + 1)
        if not inflater.eof or inflater.unused_data:
            raise CompressionError("gzip (zlib) stream is truncated, longer than expected or followed by junk")
        return out
    if kind == Compression.LZMA:
        unpacker = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=_LZMA_MEMLIMIT)
        out = unpacker.decompress(data, expected_size + 1)
        if not unpacker.eof or unpacker.unused_data:
            raise CompressionError("lzma (xz) stream is truncated, longer than expected or followed by junk")
        return out
    # ZSTD
    return _zstd().ZstdDecompressor().decompress(data, max_output_size=expected_size)


def _snappy_length(data: bytes | memoryview) -> int:
    """Read the varint length prefix of a raw snappy block."""
    value = 0
    for index in range(5):
        if index >= len(data):
            break
        byte = data[index]
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return value
    raise CompressionError("snappy image has no valid length prefix")
