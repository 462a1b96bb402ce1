"""Reaching the agents of a layout from the ensure operations (the cluster modules)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    from ..controller import Controller, Server

DEFAULT_LAYOUT = "/etc/walbops/layout.yml"  # written by the walbops.walbops.walbops role


def open_controller(layout_path: str, timeout: float = 30.0) -> Controller:
    # Imported here: the CLI registers the ensure commands, whose flags name DEFAULT_LAYOUT,
    # also for the ones that reach no agent (ensure loop, ldev, device), which should not pay for it.
    from ..controller import Controller, Layout

    return Controller(Layout.load(layout_path), timeout=timeout)


def server_of(controller: Controller, name: str, role: str | None = None) -> Server:
    """The server called ``name`` in the layout, refusing one of another role."""
    server = controller.layout.get(name)
    if role is not None and server.role != role:
        raise UsageError(f"server {name!r} is a {server.role}, not a {role}")
    return server


def volume_status(controller: Controller, server: Server, vol: str) -> dict[str, Any]:
    """The agent's status of ``vol``; ``{"state": "Clear"}`` when it does not hold the volume."""
    volumes = controller.run(server, "status")["volumes"]
    return dict(volumes.get(vol) or {"vol": vol, "state": "Clear"})
