# Copyright: (c) 2026, walbops developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Jinja filters of the walbops roles: where an agent of the inventory listens."""

from __future__ import annotations


def walbops_endpoint(host, hostvars, default_port):
    """``ADDRESS:PORT`` of the agent on inventory host ``host``.

    The address is the host's ``walbops_agent_address``, else its ``ansible_host``, else
    its name; the port its ``walbops_port``, else the role's default.
    """
    facts = hostvars[host]
    address = facts.get("walbops_agent_address") or facts.get("ansible_host") or host
    port = facts.get("walbops_port") or default_port
    return f"{address}:{int(port)}"


def walbops_secondary_archives(groups, hostvars, role_groups):
    """The archive hosts marked ``walbops_archive_secondary: true``: they hold replicas only, and
    are never a storage's default archive."""
    return [host for host in groups.get(role_groups["archive"], [])
            if hostvars[host].get("walbops_archive_secondary", False) in (True, "true", "yes", "True")]


def walbops_primary_archive(groups, hostvars, role_groups):
    """The storages' default archive: the inventory's first archive that is not a secondary."""
    secondaries = walbops_secondary_archives(groups, hostvars, role_groups)
    primaries = [host for host in groups.get(role_groups["archive"], []) if host not in secondaries]
    return primaries[0] if primaries else None


def _archives_primaries_first(groups, hostvars, role_groups):
    secondaries = walbops_secondary_archives(groups, hostvars, role_groups)
    archives = groups.get(role_groups["archive"], [])
    return [host for host in archives if host not in secondaries] + secondaries


def walbops_layout_servers(groups, hostvars, role_groups, ports, ssh=False):
    """The layout's servers: every agent of the inventory, archives first and primaries before
    secondaries (the layout's first archive is its primary).

    With ``ssh``, each server is reached through its host's sshd (``ssh: USER@HOST:PORT`` from
    ``ansible_user``, ``ansible_host`` and ``ansible_port``; docs/security.md): the layout of a
    controller outside the fleet's network, as the drill's ``walbops_drill_control: ssh`` writes.
    """
    servers = []
    for role in ("archive", "proxy", "storage"):
        hosts = _archives_primaries_first(groups, hostvars, role_groups) if role == "archive" \
            else groups.get(role_groups[role], [])
        for host in hosts:
            address, port = walbops_endpoint(host, hostvars, ports[role]).rsplit(":", 1)
            name = hostvars[host].get("walbops_agent_name") or host
            server = {"name": name, "address": address, "port": int(port), "role": role}
            if ssh:
                facts = hostvars[host]
                server["ssh"] = (f"{facts.get('ansible_user') or 'root'}@{facts.get('ansible_host') or host}:"
                                 f"{int(facts.get('ansible_port') or 22)}")
            servers.append(server)
    return servers


def walbops_auth_config(auth, role, key_file, tls_dir, keys_dir=""):
    """How an agent (``role``), or the layout (role ``controller``), authenticates.

    ``auth`` key: this host's role key file for that role in ``keys_dir`` (``ROLE.key``, as the
    role_keys tasks of the walbops role put them), or without ``keys_dir`` the cluster key
    ``key_file``; tls: this host's certificate and key for that role and the CA certificate, as
    the tls tasks of the walbops role put them in ``tls_dir``.
    """
    if auth == "key":
        path = f"{keys_dir}/{role}.key" if keys_dir else key_file
        return {"key_file": path} if role == "controller" else {"cluster_key_file": path}
    if auth != "tls":
        raise ValueError(f"walbops_auth must be key or tls, not {auth!r}")
    files = {"cert": f"{tls_dir}/{role}.crt", "key": f"{tls_dir}/{role}.key", "ca": f"{tls_dir}/ca.crt"}
    if role == "controller":
        return {"tls": files}
    return {f"tls_{name}": path for name, path in files.items()}


def walbops_archived_volumes(archive_host, groups, hostvars, role_groups, only=None,
                             default_replication="synchronizing"):
    """The volumes (their walbops_volumes entries) that ``archive_host`` holds: those whose storage
    backs up to it, and on a secondary archive those replicated to it.

    A storage host's archive is its ``walbops_storage_archive``, else the inventory's primary
    archive; a volume is replicated to every secondary unless its ``replication`` (default
    ``default_replication``) is ``none``. ``only`` keeps one volume by name.
    """
    primary = walbops_primary_archive(groups, hostvars, role_groups)
    secondary = archive_host in walbops_secondary_archives(groups, hostvars, role_groups)
    found = []
    for host in groups.get(role_groups["storage"], []):
        facts = hostvars[host]
        backed_up_here = (facts.get("walbops_storage_archive") or primary) == archive_host
        for volume in facts.get("walbops_volumes") or []:
            if only not in (None, volume["name"]) or volume.get("role", "target") == "standby":
                continue
            if backed_up_here or secondary and walbops_replication_mode(volume, default_replication) != "none":
                found.append(volume)
    return found


REPLICATION_MODES = ("synchronizing", "once", "none")


def walbops_replication_mode(volume, default):
    """How a volume is kept on the secondary archives: its ``replication``, else ``default``."""
    mode = volume.get("replication") or default
    if mode not in REPLICATION_MODES:
        raise ValueError(f"{volume.get('name')}: replication must be one of {', '.join(REPLICATION_MODES)}, "
                         f"not {mode!r}")
    return mode


def walbops_replications(volumes, secondaries, hostvars, default):
    """One entry per (volume, secondary archive) to replicate to: {vol, destination (the agent's
    name), mode}, for this storage's target volumes whose mode is not ``none``."""
    entries = []
    for volume in walbops_targets(volumes):
        mode = walbops_replication_mode(volume, default)
        if mode == "none":
            continue
        for host in secondaries:
            entries.append({"vol": volume["name"], "destination": hostvars[host].get("walbops_agent_name") or host,
                            "mode": mode})
    return entries


def walbops_targets(volumes):
    """The volumes this storage is the target of: every walbops_volumes entry but those with
    ``role: standby`` (a copy of a volume another storage ships, WalB's standby)."""
    return [volume for volume in volumes or [] if volume.get("role", "target") != "standby"]


def walbops_drilled(volumes, on, default_replication):
    """The volumes a drill restores on archive ``on``: on the primary every target volume, on a
    secondary those replicated there (replication not ``none``)."""
    targets = walbops_targets(volumes)
    if on == "primary":
        return targets
    return [volume for volume in targets if walbops_replication_mode(volume, default_replication) != "none"]


class FilterModule:
    def filters(self):
        return {"endpoint": walbops_endpoint, "layout_servers": walbops_layout_servers,
                "archived_volumes": walbops_archived_volumes, "targets": walbops_targets,
                "auth_config": walbops_auth_config, "primary_archive": walbops_primary_archive,
                "secondary_archives": walbops_secondary_archives,
                "replications": walbops_replications, "drilled": walbops_drilled}
