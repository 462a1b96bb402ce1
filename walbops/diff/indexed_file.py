"""Reading and writing indexed wdiff files.

The writer appends each IO's compressed image as it arrives and keeps only the index
in memory; the reader reads the index from the end of the file and fetches images by
offset, keeping recently decompressed ones in a small LRU cache (WalB keeps 32 MiB).
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import numpy as np

from ..errors import BadField, ChecksumMismatch, FormatError, TruncatedRecord
from ..formats import checksum as csum
from ..formats.compression import Compression, compress_exact, decompress
from ..formats.indexed import (
    INDEX_RECORD_STRUCT,
    INDEX_SUPER_STRUCT,
    IndexRecord,
    IndexSuper,
    index_padding,
    split_aligned,
)
from ..formats.ldev import LOGICAL_BLOCK_SIZE
from ..formats.wdiff import DEFAULT_MAX_IO_LB, FILE_HEADER_STRUCT, DiffType, FileHeader
from .io import (
    MAX_IO_BYTES,
    MAX_TABLE_ENTRIES,
    DiffIo,
    IntervalMap,
    IoKind,
    Stats,
    StoredImage,
    is_all_zero,
    merge_ios,
)
from .logs import bad_checksums
from .sorted_file import FLAGS_OF, kind_of

CACHE_BYTES = 32 << 20  # [bytes] decompressed images kept (walb-tools INDEXED_DIFF_CACHE_SIZE)
_INDEX_BATCH = 4096  # index records read per pread, and serialized at once
_COMPRESSION_SLACK = 1 << 16  # [bytes] see sorted_file
# An index record as numpy sees it (INDEX_RECORD_STRUCT, 48 bytes).
_INDEX_DTYPE = np.dtype([("address", "<u8"), ("blocks", "<u4"), ("flags", "u1"), ("compression", "u1"),
                         ("reserved1", "<u2"), ("data_offset", "<u8"), ("data_size", "<u4"), ("io_offset", "<u4"),
                         ("orig_blocks", "<u4"), ("reserved2", "<u4"), ("io_checksum", "<u4"),
                         ("rec_checksum", "<u4")])
_MAX_COMPRESSION = max(Compression)
_VERIFY_WINDOW = 8 << 20  # [bytes] of images read and checked at once
_INDEX_SCAN_BATCH = 1 << 16  # index records (3 MiB) checked at once by verify
_DISTINCT_MERGE_ROWS = 1 << 20  # images collected from batches before duplicates are merged away
_IMAGE_FIELDS = ("data_offset", "data_size", "compression", "io_checksum", "orig_blocks")
MIN_CACHED_IMAGES = 2  # kept whatever their size: a large IO with small writes inside it stays cached
# A reader may decompress at most this many times the bytes of the distinct images it holds (and
# MAX_IO_BYTES * 4 more): an index whose records jump between images so that each must be
# decompressed again and again (WalB's writer never makes one) is refused, not served for hours.
DECOMPRESSION_FACTOR = 16
_KIND_FLAGS = int(FLAGS_OF[IoKind.ALLZERO] | FLAGS_OF[IoKind.DISCARD])
_WRITE_BATCH_BYTES = 4 << 20  # [bytes] of images summed and written at once
_WRITE_BATCH_IOS = 4096  # IOs indexed at once, at most (zero and discard IOs have no bytes)


class IndexedDiffReader:
    """Reads an indexed wdiff through a file descriptor (random access).

    Iterating yields DiffIo in address order; their images are verified against
    ``io_checksum`` when first loaded.

    Args:
        fd: an open file descriptor; the caller closes it.
        source: name used in error messages.
    """

    def __init__(self, fd: int, source: str = "wdiff") -> None:
        self.fd = fd
        self.source = source
        self.file_size = os.fstat(fd).st_size
        try:
            self.header = FileHeader.parse(os.pread(fd, FILE_HEADER_STRUCT.size, 0))
            if self.header.type != DiffType.INDEXED:
                raise BadField("not an indexed wdiff (type sorted)", 6)
            if self.file_size < FILE_HEADER_STRUCT.size + INDEX_SUPER_STRUCT.size:
                raise TruncatedRecord("indexed wdiff is too short for its index super", self.file_size)
            super_at = self.file_size - INDEX_SUPER_STRUCT.size
            self.index = IndexSuper.parse(os.pread(fd, INDEX_SUPER_STRUCT.size, super_at), self.file_size)
        except FormatError as exc:
            raise exc.located(source)
        self.uuid = self.header.uuid
        self._cache: OrderedDict[int, StoredImage] = OrderedDict()
        self._cached_bytes = 0
        self._decompressed = 0  # [bytes] by _image, held to _decompression_budget()
        self.distinct_image_bytes: int | None = None  # [bytes] decompressed, once _distinct_images ran

    def records(self) -> Iterator[IndexRecord]:
        """Yield the index records, checking order and bounds."""
        previous_end = 0
        for first in range(0, self.index.n_records, _INDEX_BATCH):
            count = min(_INDEX_BATCH, self.index.n_records - first)
            at = self.index.index_offset + first * INDEX_RECORD_STRUCT.size
            raw = os.pread(self.fd, count * INDEX_RECORD_STRUCT.size, at)
            if len(raw) < count * INDEX_RECORD_STRUCT.size:
                raise TruncatedRecord("index is cut short", at, self.source)
            for index in range(count):
                offset = at + index * INDEX_RECORD_STRUCT.size
                try:
                    rec = IndexRecord.parse(raw, index * INDEX_RECORD_STRUCT.size)
                except FormatError as exc:
                    exc.offset = None
                    raise exc.located(self.source, offset)
                if rec.io_address < previous_end:
                    raise BadField(f"index record at LB {rec.io_address} overlaps or precedes the one before",
                                   offset, self.source)
                previous_end = rec.end_address
                if rec.is_normal:
                    self._check_image_bounds(rec, offset)
                yield rec

    def _check_image_bounds(self, rec: IndexRecord, offset: int) -> None:
        raw_size = rec.orig_blocks * LOGICAL_BLOCK_SIZE
        if raw_size > MAX_IO_BYTES or rec.data_size > raw_size + _COMPRESSION_SLACK:
            raise BadField(f"index record at LB {rec.io_address}: image of {rec.orig_blocks} LB / {rec.data_size} "
                           f"stored bytes exceeds the {MAX_IO_BYTES >> 20} MiB IO bound", offset, self.source)
        if rec.data_offset + rec.data_size > self.index.index_offset:
            raise BadField(f"index record at LB {rec.io_address}: image at {rec.data_offset} runs into the index",
                           offset, self.source)

    def _image(self, rec: IndexRecord) -> StoredImage:
        image = self._cache.get(rec.data_offset)
        if image is not None:
            self._cache.move_to_end(rec.data_offset)
            return image
        self._decompressed += rec.orig_blocks * LOGICAL_BLOCK_SIZE
        if self._decompressed > self._decompression_budget():
            raise BadField(f"reading up to LB {rec.io_address} decompresses {self._decompressed} bytes, over "
                           f"{DECOMPRESSION_FACTOR} times its distinct images ({self.distinct_image_bytes} bytes): "
                           "its index jumps between images in a way WalB's writer never does", None, self.source)
        stored = os.pread(self.fd, rec.data_size, rec.data_offset)
        if len(stored) < rec.data_size:
            raise TruncatedRecord(f"image of LB {rec.io_address} is cut short", rec.data_offset, self.source)
        if csum.checksum(stored) != rec.io_checksum:
            raise ChecksumMismatch(f"image checksum mismatch for LB {rec.io_address}", rec.data_offset, self.source)
        image = StoredImage(stored, rec.compression, rec.io_checksum, rec.orig_blocks, rec.data_offset)
        try:
            image.plain()
        except FormatError as exc:
            raise exc.located(self.source, rec.data_offset)
        self._cache[rec.data_offset] = image
        self._cached_bytes += rec.orig_blocks * LOGICAL_BLOCK_SIZE
        while self._cached_bytes > CACHE_BYTES and len(self._cache) > MIN_CACHED_IMAGES:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= old.blocks * LOGICAL_BLOCK_SIZE
        return image

    def _decompression_budget(self) -> int:
        """[bytes] the most :meth:`_image` may decompress; the first call beyond the slack scans the index."""
        slack = 4 * MAX_IO_BYTES
        if self._decompressed <= slack:
            return slack
        if self.distinct_image_bytes is None:
            self._distinct_images()
        return DECOMPRESSION_FACTOR * (self.distinct_image_bytes or 0) + slack

    def verify(self) -> int:
        """Check the whole file as iterating it and loading every image would, but at numpy speed:
        every index record (checksum, alignment, bounds, order) and every image (checksum, and
        decompression to its size), each distinct image once. Returns the number of index records.

        The index is read ``_INDEX_SCAN_BATCH`` records at a time, so memory follows the number of
        distinct images (21 bytes each), not the size the index claims.

        Raises:
            FormatError: the first problem, as :meth:`records` and the image loader report it.
        """
        images = self._distinct_images()
        if len(images):
            self._verify_images(images)
        return self.index.n_records

    def _distinct_images(self) -> np.ndarray:
        """The distinct images the index points to (offset, size, compression, checksum, blocks),
        sorted by offset, after checking every index record; sets ``distinct_image_bytes``."""
        previous_end = 0  # [LB] where the record before the batch ends
        found: list[np.ndarray] = []
        pending = 0
        for first in range(0, self.index.n_records, _INDEX_SCAN_BATCH):
            count = min(_INDEX_SCAN_BATCH, self.index.n_records - first)
            at = self.index.index_offset + first * INDEX_RECORD_STRUCT.size
            raw = os.pread(self.fd, count * INDEX_RECORD_STRUCT.size, at)
            if len(raw) < count * INDEX_RECORD_STRUCT.size or not self._index_is_sound(raw, previous_end):
                for _ in self.records():  # the exact error, at its record
                    pass
                raise BadField("the index breaks a rule of the format", at, self.source)
            table = np.frombuffer(raw, dtype=_INDEX_DTYPE)
            previous_end = int(table["address"][-1]) + int(table["blocks"][-1])
            batch = np.unique(table[(table["flags"] & _KIND_FLAGS) == 0][list(_IMAGE_FIELDS)])
            found.append(batch)
            pending += len(batch)
            if pending > _DISTINCT_MERGE_ROWS:  # an image several batches point to is kept once
                found = [np.unique(np.concatenate(found))]
                pending = len(found[0])
        images = np.unique(np.concatenate(found)) if found else np.empty(0, _INDEX_DTYPE[list(_IMAGE_FIELDS)])
        self.distinct_image_bytes = int(images["orig_blocks"].sum(dtype=np.uint64)) * LOGICAL_BLOCK_SIZE
        return images

    def _index_is_sound(self, raw: bytes, previous_end: int = 0) -> bool:
        """Whether every index record passes every check of :meth:`records` (vectorized); the
        first must start at or after ``previous_end``."""
        if not raw:
            return True
        table = np.frombuffer(raw, dtype=_INDEX_DTYPE)
        words = np.frombuffer(raw, dtype="<u4").reshape(len(table), INDEX_RECORD_STRUCT.size // 4)
        ok = (words.sum(axis=1, dtype=np.uint64) & np.uint64(0xFFFF_FFFF)) == 0
        address, blocks = table["address"], table["blocks"].astype(np.uint64)
        ok &= (blocks != 0) & ((blocks & (blocks - np.uint64(1))) == 0)
        ok &= address % np.maximum(blocks, np.uint64(1)) == 0
        flags = table["flags"]
        ok &= (flags & _KIND_FLAGS) != _KIND_FLAGS
        orig = table["orig_blocks"].astype(np.uint64)
        offset, size = table["data_offset"], table["data_size"].astype(np.uint64)
        raw_size = orig * np.uint64(LOGICAL_BLOCK_SIZE)
        index_offset = np.uint64(self.index.index_offset)
        image_ok = ((table["compression"] <= _MAX_COMPRESSION) & (size != 0)
                    & (table["io_offset"].astype(np.uint64) + blocks <= orig)
                    & (offset >= np.uint64(FILE_HEADER_STRUCT.size)) & (raw_size <= np.uint64(MAX_IO_BYTES))
                    & (size <= raw_size + np.uint64(_COMPRESSION_SLACK)) & (offset <= index_offset)
                    & (size <= index_offset - np.minimum(offset, index_offset)))
        ok &= ((flags & _KIND_FLAGS) != 0) | image_ok
        # Sorted and non-overlapping: each record starts at or after the end of the one before.
        ok[0] &= bool(address[0] >= np.uint64(previous_end))
        ok[1:] &= (address[1:] >= address[:-1]) & (address[1:] - address[:-1] >= blocks[:-1])
        return bool(ok.all())

    def _verify_images(self, images: np.ndarray) -> None:
        """Checksum and decompress each distinct image once, reading them ``_VERIFY_WINDOW`` bytes
        at a time (memory stays bounded whatever the file's size); the first bad one raises."""
        offsets = images["data_offset"].astype(np.int64)  # sorted: np.unique sorts on the first field
        ends = offsets + images["data_size"].astype(np.int64)
        start = 0
        while start < len(images):
            stop = max(start + 1, int(np.searchsorted(offsets, offsets[start] + _VERIFY_WINDOW)))
            low, high = int(offsets[start]), int(ends[start:stop].max())
            window = memoryview(os.pread(self.fd, high - low, low))
            if len(window) < high - low:
                raise TruncatedRecord(f"images at {low}..{high} are cut short", low, self.source)
            self._verify_window(images[start:stop], window, low)
            start = stop

    def _verify_window(self, images: np.ndarray, window: memoryview, low: int) -> None:
        """:meth:`_verify_images` for the images in ``window``, the file's bytes from ``low``."""
        offsets, sizes = images["data_offset"].astype(np.int64) - low, images["data_size"]
        # Images at multiples of 4 bytes are summed by one numpy call, the others one by one.
        aligned = np.flatnonzero((offsets % 4 == 0) & (sizes % 4 == 0)).tolist()
        spans = [(int(offsets[i]), int(offsets[i]) + int(sizes[i]), int(images["io_checksum"][i])) for i in aligned]
        suspects = {aligned[i] for i in bad_checksums(window, spans, 0)}
        suspects.update(np.flatnonzero((offsets % 4 != 0) | (sizes % 4 != 0)).tolist())
        # A raw image of the right size decompresses by definition.
        raw = (images["compression"] == Compression.NONE) & \
            (sizes.astype(np.uint64) == images["orig_blocks"].astype(np.uint64) * np.uint64(LOGICAL_BLOCK_SIZE))
        for index in sorted(suspects.union(np.flatnonzero(~raw).tolist())):
            offset, size, compression, checksum, blocks = (int(value) for value in images[index].tolist())
            stored = window[offset - low:offset - low + size]
            if index in suspects and csum.checksum(stored) != checksum:
                raise ChecksumMismatch(f"image checksum mismatch for the image at offset {offset}", offset,
                                       self.source)
            try:
                decompress(compression, stored, blocks * LOGICAL_BLOCK_SIZE)
            except FormatError as exc:
                raise exc.located(self.source, offset)

    def __iter__(self) -> Iterator[DiffIo]:
        for rec in self.records():
            kind = kind_of(rec.flags)
            if kind != IoKind.NORMAL:
                yield DiffIo(rec.io_address, rec.io_blocks, kind)
            else:
                yield DiffIo(rec.io_address, rec.io_blocks, kind, image=self._image(rec), image_offset=rec.io_offset)


class IndexedDiffWriter:
    """Writes an indexed wdiff from IOs in arrival order (later IOs win).

    Images go to the file at once; only the index stays in memory, and past
    ``max_entries`` it is written out to temporary sorted runs that ``close`` merges
    (later runs win), so memory is bounded however many IOs arrive.

    Args:
        stream: the output stream (written sequentially).
        uuid: wdev uuid for the file header.
        compression: compression of new images (raw fallback).
        level: compression level.
        max_io_blocks: index records are split to at most this many LB.
        max_entries: index entries kept in memory before spilling a run.
        tmp_dir: where runs go (default: the system's temporary directory).
    """

    def __init__(self, stream: BinaryIO, uuid: bytes, compression: Compression = Compression.LZ4, level: int = 0,
                 max_io_blocks: int = DEFAULT_MAX_IO_LB, max_entries: int = MAX_TABLE_ENTRIES,
                 tmp_dir: str | None = None) -> None:
        self.stream = stream
        self.max_entries = max_entries
        self.tmp_dir = tmp_dir
        self._runs: list[BinaryIO] = []
        self.compression = compression
        self.level = level
        self.max_io_blocks = max_io_blocks
        self._index = IntervalMap(on_cut=lambda io: io)  # no data in memory, only image references
        self._n_data = 0
        self.stats = Stats()
        self.offset = FILE_HEADER_STRUCT.size
        stream.write(FileHeader(uuid, DiffType.INDEXED).serialize())

    def add(self, io: DiffIo, zero_checked: bool = False) -> None:
        """Append one IO; it replaces whatever earlier IOs it overlaps.

        ``zero_checked``: a normal IO is known not to be all zeros (``log_ios`` made those ALLZERO).
        """
        self.add_all((io,), zero_checked)

    def add_all(self, ios: Iterable[DiffIo], zero_checked: bool = False) -> None:
        """:meth:`add` each IO in order, their images summed and written a batch at a time.

        The IOs' data must stay valid until this returns (the packs of one piece of a wlog
        stream, say); images are kept as views of it until their batch is written.
        """
        entries: list[tuple[int, int, IoKind, int, int]] = []  # address, blocks, kind, compression, size
        images: list[bytes | memoryview] = []
        batch_bytes = 0
        for io in ios:
            # walb-tools counts every IO it accepts in n_data, discards and zero writes included.
            self._n_data += 1
            kind = io.kind
            data = io.data() if kind == IoKind.NORMAL else None  # once: an image in a file is read each call
            if data is not None and (zero_checked or not is_all_zero(data)):
                compression = self.compression
                stored: bytes | memoryview = data
                if compression != Compression.NONE:
                    stored = compress_exact(compression, data, self.level)
                    if len(stored) >= len(data):  # compress()'s fallback, without copying the data
                        compression, stored = Compression.NONE, data
                images.append(stored)
                entries.append((io.address, io.blocks, kind, compression, len(stored)))
                batch_bytes += len(stored)
            else:
                entries.append((io.address, io.blocks, IoKind.ALLZERO if kind == IoKind.NORMAL else kind, 0, 0))
            if batch_bytes >= _WRITE_BATCH_BYTES or len(entries) >= _WRITE_BATCH_IOS:
                self._write_batch(entries, images)
                entries, images, batch_bytes = [], [], 0
        if entries:
            self._write_batch(entries, images)

    def _write_batch(self, entries: list[tuple[int, int, IoKind, int, int]], images: list[bytes | memoryview]) -> None:
        """Write ``images`` (those of the normal entries, in order) and index every entry."""
        joined = b"".join(images)
        checksums = csum.checksums_end_to_end(joined, [len(image) for image in images])
        self.stream.write(joined)
        # WalB gives every index record the file offset its IO arrived at, and its LB offset
        # inside that IO, whether or not the IO has an image; readers ignore both for ALLZERO
        # and DISCARD, but keeping them makes the files byte-identical.
        offset = self.offset
        normal = 0
        index = self._index
        for address, blocks, kind, compression, size in entries:
            if kind == IoKind.NORMAL:
                image = StoredImage.reference(offset, size, compression, checksums[normal], blocks)
                normal += 1
                offset += size
            else:
                image = StoredImage.reference(offset, 0, 0, 0, 0)
            index.add(DiffIo(address, blocks, kind, image=image))
            if len(index) > self.max_entries:
                self._spill()
        self.offset = offset

    def _spill(self) -> None:
        run = tempfile.TemporaryFile(dir=self.tmp_dir, prefix="walbops-index-")
        for io in self._index:
            image = io.image
            if image is None:
                run.write(_RUN_ENTRY.pack(io.address, io.blocks, io.kind, 0, 0, 0, 0, 0, 0))
            else:
                run.write(_RUN_ENTRY.pack(io.address, io.blocks, io.kind, image.compression, image.file_offset,
                                          image.size, image.checksum, image.blocks, io.image_offset))
        run.seek(0)
        self._runs.append(run)
        self._index.clear()

    def _merged_index(self) -> Iterator[DiffIo]:
        if not self._runs:
            return iter(self._index)
        if len(self._index):
            self._spill()
        return merge_ios([_read_run(run) for run in self._runs])

    def close(self) -> None:
        """Write the alignment padding, the index and the index super."""
        padding = index_padding(self.offset)
        self.stream.write(b"\0" * padding)
        index_offset = self.offset + padding
        n_records = 0
        rows: list[tuple[int, ...]] = []
        for io in self._merged_index():
            self.stats.count(io)
            image, flags = io.image, FLAGS_OF[io.kind]
            for address, blocks in split_aligned(io.address, io.blocks, self.max_io_blocks):
                if image is None:
                    rows.append((address, blocks, flags, 0, 0, 0, 0, 0, 0))
                else:
                    rows.append((address, blocks, flags, image.compression, image.file_offset, image.size,
                                 io.image_offset + address - io.address, image.blocks, image.checksum))
            if len(rows) >= _INDEX_BATCH:
                self.stream.write(_index_records(rows))
                n_records += len(rows)
                rows.clear()
        self.stream.write(_index_records(rows))
        n_records += len(rows)
        self.stream.write(IndexSuper(index_offset, n_records, self._n_data).serialize())
        self.stats.extra.update(index_records=n_records, n_data=self._n_data, spilled_runs=len(self._runs),
                                bytes=index_offset + n_records * INDEX_RECORD_STRUCT.size + INDEX_SUPER_STRUCT.size)
        for run in self._runs:
            run.close()
        self._runs.clear()


_ROW_FIELDS = ("address", "blocks", "flags", "compression", "data_offset", "data_size", "io_offset", "orig_blocks",
               "io_checksum")


def _index_records(rows: list[tuple[int, ...]]) -> bytes:
    """The serialized index records of ``rows`` (the fields of _ROW_FIELDS), checksummed at numpy speed."""
    if not rows:
        return b""
    table = np.zeros(len(rows), dtype=_INDEX_DTYPE)
    for name, column in zip(_ROW_FIELDS, zip(*rows, strict=True), strict=True):
        table[name] = column
    words = table.view("<u4").reshape(len(rows), INDEX_RECORD_STRUCT.size // 4)
    table["rec_checksum"] = -(words.sum(axis=1, dtype=np.uint64) & np.uint64(0xFFFF_FFFF)) & np.uint64(0xFFFF_FFFF)
    return table.tobytes()


# A spilled index entry: address u64, blocks u32, kind u8, compression u8, image file
# offset u64, stored size u32, checksum u32, image blocks u32, offset in image u32 (LB).
_RUN_ENTRY = struct.Struct("<QIBBQIIII")


def _read_run(run: BinaryIO) -> Iterator[DiffIo]:
    while True:
        raw = run.read(_RUN_ENTRY.size * 4096)
        if not raw:
            return
        for fields in _RUN_ENTRY.iter_unpack(raw):
            address, blocks, kind, compression, file_offset, size, checksum, image_blocks, image_offset = fields
            image = StoredImage.reference(file_offset, size, compression, checksum, image_blocks)
            yield DiffIo(address, blocks, IoKind(kind), image=image, image_offset=image_offset)
