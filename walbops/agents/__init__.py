"""The three agents (storage, proxy, archive): WalB's daemons as asyncio servers.

Vocabulary (walb.md §1-3):

volume
    a protected block device, known to every agent by its id (``[0-9A-Za-z-]{1,64}``).
steady / transient state
    each volume on each agent is in a steady state (persisted, e.g. ``Archived``) or
    passing through a transient one (e.g. ``FullSync``) on the way to the next; a failed
    operation rolls back to the steady state it started from (:mod:`.state`).
action
    background work on a volume (``Merge``, ``Restore``, ``WlogSend`` …) counted so that
    conflicting commands are refused while it runs.
"""
