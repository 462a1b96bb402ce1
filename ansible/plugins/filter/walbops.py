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


def walbops_layout_servers(groups, hostvars, role_groups, ports):
    """The layout's servers: every agent of the inventory, archives first (the first is the primary)."""
    servers = []
    for role in ("archive", "proxy", "storage"):
        for host in groups.get(role_groups[role], []):
            address, _, port = walbops_endpoint(host, hostvars, ports[role]).rpartition(":")
            name = hostvars[host].get("walbops_agent_name") or host
            servers.append({"name": name, "address": address, "port": int(port), "role": role})
    return servers


def walbops_auth_config(auth, role, key_file, tls_dir):
    """How an agent (``role``), or the layout (role ``controller``), authenticates.

    ``auth`` key: the cluster key; tls: this host's certificate and key for that role and the CA
    certificate, as the tls tasks of walbops_common put them in ``tls_dir``.
    """
    if auth == "key":
        return {"key_file": key_file} if role == "controller" else {"cluster_key_file": key_file}
    if auth != "tls":
        raise ValueError(f"walbops_auth must be key or tls, not {auth!r}")
    files = {"cert": f"{tls_dir}/{role}.crt", "key": f"{tls_dir}/{role}.key", "ca": f"{tls_dir}/ca.crt"}
    if role == "controller":
        return {"tls": files}
    return {f"tls_{name}": path for name, path in files.items()}


def walbops_archived_volumes(archive_host, groups, hostvars, role_groups, only=None):
    """The volumes (their walbops_volumes entries) whose storage backs up to ``archive_host``.

    A storage host's archive is its ``walbops_storage_archive``, else the first archive of the
    inventory. ``only`` keeps one volume by name.
    """
    archives = groups.get(role_groups["archive"], [])
    primary = archives[0] if archives else None
    found = []
    for host in groups.get(role_groups["storage"], []):
        facts = hostvars[host]
        if (facts.get("walbops_storage_archive") or primary) == archive_host:
            found += [volume for volume in facts.get("walbops_volumes") or [] if only in (None, volume["name"])]
    return found


def walbops_targets(volumes):
    """The volumes this storage is the target of: every walbops_volumes entry but those with
    ``role: standby`` (a copy of a volume another storage ships, WalB's standby)."""
    return [volume for volume in volumes or [] if volume.get("role", "target") != "standby"]


class FilterModule:
    def filters(self):
        return {"walbops_endpoint": walbops_endpoint, "walbops_layout_servers": walbops_layout_servers,
                "walbops_archived_volumes": walbops_archived_volumes, "walbops_targets": walbops_targets,
                "walbops_auth_config": walbops_auth_config}
