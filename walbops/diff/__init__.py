"""The diff engine: reading and writing wlogs and wdiffs, converting, merging, applying.

Everything here streams: memory stays bounded by a configurable budget however large
the inputs are. The unit the engine passes around is a :class:`~walbops.diff.io.DiffIo`,
one IO of a diff with its data decompressed only when somebody needs it.
"""
