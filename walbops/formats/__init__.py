"""WalB's on-disk formats, byte for byte; pure codecs with no I/O.

Vocabulary (docs/formats.md states every byte):

LB
    logical block, 512 bytes: the unit of IO addresses and sizes.
PB
    physical block of the log device, ``pbs`` bytes (512 or 4096): the unit of lsids.
lsid
    log sequence id, a position in the endless log counted in PB. The log device keeps
    the most recent part of it in a ring buffer.
log pack
    one header PB (a :class:`~walbops.formats.ldev.LogpackHeader`) followed by the data
    PBs of its records, contiguous in lsid space.
log record
    one IO inside a log pack: normal (with data), discard (no data) or padding (filler
    up to the end of the ring buffer).
wlog
    a file of log packs behind a 4 KiB header (:mod:`walbops.formats.wlog`).
diff record
    one IO of a wdiff, addressed in LB: normal (compressed data), ALLZERO or DISCARD.
    A wdiff's records are sorted and never overlap (:mod:`walbops.formats.wdiff`,
    :mod:`walbops.formats.indexed`).
gid
    generation id of a snapshot; diffs lead from one snapshot to another
    (:mod:`walbops.gid`).
"""
