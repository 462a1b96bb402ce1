"""The userspace walb device: a log device (ldev) and a data device (ddev) as one volume.

Every write is first logged in the ldev ring buffer in WalB's format, then applied to
the ddev, exactly as the walb kernel driver does; the volume is exposed as a FUSE file
with a loop device on top (``/dev/walbops/NAME``), and driven through a control socket.

lsids, as WalB names them (all in PB of the ldev; ``oldest <= prev_written <= written
<= permanent <= completed <= latest``):

latest
    the next lsid to allocate.
completed
    every pack below it has been written to the ldev (the write is acknowledged).
permanent (= flush)
    every pack below it is durable on the ldev (the ldev was synced); only logs below
    it are extracted, and only IOs below it are applied to the ddev.
written
    every IO below it has been applied to the ddev.
prev_written
    the written lsid saved in the super sector at the last checkpoint; after a crash
    the logs from here are redone onto the ddev.
oldest
    logs below it may be overwritten (the storage agent moves it after shipping).
"""
