"""One Config per agent process: a YAML file validated with jsonschema, every key also a flag.

The table ``OPTIONS`` is the single source: it gives each key its type, default, the
roles that take it and its help, and both the JSON schema and the command-line flags are
made from it. A bad value is refused with the file, the key and what was expected.
"""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import yaml

from ..errors import UsageError
from ..logs import FORMATS, LEVELS
from ..net import LISTEN_PATTERN
from ..net.auth import Keys, load_keys
from ..net.messages import HOST_TYPES
from ..net.tls import Credentials, Secret, TlsFiles
from ..store import parse_store_flag, store_config_schema
from ..units import parse_size

ROLES = HOST_TYPES  # the agents: what each server says it is in the handshake
DEFAULT_PORTS = {"storage": 10000, "proxy": 10100, "archive": 10200}  # the WalB tutorial's ports

_SIZE = {"type": ["integer", "string"], "pattern": r"^[0-9]+[kKmMgGtT]?$", "minimum": 0}
_SECONDS = {"type": "number", "minimum": 0}
_HOST_PORT = {"type": "string", "pattern": r"^[^\s:]+:[0-9]{1,5}$"}


@dataclass(frozen=True)
class Option:
    key: str
    schema: dict[str, Any]
    default: Any
    roles: tuple[str, ...]
    help: str


OPTIONS: tuple[Option, ...] = (
    Option("id", {"type": "string", "minLength": 1}, None, ROLES, "node id sent in the handshake (default: hostname)"),
    Option("listen", {"type": "string"}, "0.0.0.0", ROLES, "address to listen on"),
    Option("port", {"type": "integer", "minimum": 1, "maximum": 65535}, None, ROLES,
           "port (default storage 10000, proxy 10100, archive 10200)"),
    Option("base_dir", {"type": "string"}, None, ROLES,
           "directory for volume metadata (default /var/lib/walbops/ROLE)"),
    Option("log_file", {"type": "string"}, "-", ROLES, "log file, - for stderr; relative to base_dir"),
    Option("max_connections", {"type": "integer", "minimum": 1, "maximum": 10000}, 10, ROLES,
           "connections served at once; more wait"),
    Option("socket_timeout", _SECONDS, 10.0, ROLES, "seconds a peer may stay silent [s]"),
    Option("cluster_key_file", {"type": "string"}, None, ROLES,
           "the cluster key (walbops keygen): key mode, frames unencrypted; not with tls_*"),
    Option("tls_cert", {"type": "string"}, None, ROLES, "TLS mode: this agent's certificate (walbops pki issue)"),
    Option("tls_key", {"type": "string"}, None, ROLES, "TLS mode: its private key"),
    Option("tls_ca", {"type": "string"}, None, ROLES, "TLS mode: the CA certificates it trusts (two in a rollover)"),
    Option("shutdown_timeout", _SECONDS, 30.0, ROLES, "graceful shutdown waits this long for work to end [s]"),
    Option("debug", {"type": "boolean"}, False, ROLES, "debug logging (log_level debug)"),
    Option("log_level", {"enum": list(LEVELS)}, "info", ROLES, "least severe level logged"),
    Option("log_format", {"enum": list(FORMATS)}, "text", ROLES,
           "text lines, or JSON lines (time, level, logger, message, rid)"),
    Option("metrics_listen", {"type": "string", "pattern": f"^({LISTEN_PATTERN})?$"}, "", ROLES,
           "serve Prometheus metrics at http://HOST:PORT/metrics (docs/operations.md; empty: off)"),
    # storage
    Option("archive", _HOST_PORT, None, ("storage",), "primary archive, HOST:PORT"),
    Option("proxies", {"type": "array", "items": _HOST_PORT, "minItems": 1}, None, ("storage",),
           "proxies in priority order, HOST:PORT each"),
    Option("implicit_snapshot_interval", _SECONDS, 10.0, ("storage",), "implicit snapshot every [s]"),
    Option("ts_delta_interval", _SECONDS, 60.0, ("storage",),
           "ask the primary archive for its latest snapshots every [s], for get ts-delta (WalB -tsdintvl); 0: never"),
    Option("max_wlog_send", _SIZE, "128M", ("storage",), "most log sent in one transfer; also the gid step"),
    Option("bulk_size", _SIZE, "256K", ("storage",), "full backup bulk size"),
    Option("full_scan_bps", _SIZE, 0, ("storage",), "most bytes a second a full or hash backup reads (0: no limit)"),
    Option("retry_delay", _SECONDS, 1.0, ("storage", "proxy"), "first retry delay [s]"),
    Option("retry_max_delay", _SECONDS, 300.0, ("storage", "proxy"), "longest retry delay (exponential backoff) [s]"),
    # proxy
    Option("give_up_timeout", _SECONDS, 1800.0, ("proxy",), "stop retrying a send when no log arrived for [s]"),
    Option("max_wdiff_send", _SIZE, "128M", ("proxy",), "most diff data merged into one send"),
    Option("max_wdiff_send_count", {"type": "integer", "minimum": 1}, 1000, ("proxy",), "most diff files in one send"),
    Option("max_wlog_receive", _SIZE, "1G", ("proxy",),
           "largest wlog transfer a storage may announce (at least its max_wlog_send)"),
    # archive
    Option("max_volume_size", _SIZE, "64T", ("archive",),
           "largest volume a full or hash backup or a resize may announce; diffs are bounded by it too"),
    Option("store", store_config_schema(), {"kind": "dir"}, ("archive",),
           "dir (default: base_dir/images) or lvm with a VG and optional thin pool"),
    # A walbops device reads discarded blocks back as zeros, so zeroing them on apply
    # restores exactly what the volume held; WalB's own default is ignore.
    Option("discard", {"enum": ["ignore", "zero", "passdown"]}, "zero", ("archive",),
           "what applying a DISCARD does"),
)

REQUIRED = {"storage": ("archive", "proxies"), "proxy": (), "archive": ()}
TLS_KEYS = ("tls_cert", "tls_key", "tls_ca")


def schema_for(role: str) -> dict[str, Any]:
    """The JSON schema of a ``role`` config file."""
    return {
        "type": "object",
        "properties": {option.key: option.schema for option in OPTIONS if role in option.roles},
        "additionalProperties": False,
    }


def load_yaml(path: str) -> Any:
    """A YAML file's content; an unreadable file or bad YAML is a UsageError naming the file."""
    try:
        with open(path) as stream:
            return yaml.safe_load(stream)
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML: {exc}") from None


def host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


@dataclass(frozen=True)
class Config:
    """Everything one agent process is told."""

    role: str
    values: dict[str, Any] = field(default_factory=dict)
    source: str = "<flags>"

    def __getattr__(self, key: str) -> Any:
        try:
            return self.values[key]
        except KeyError:
            raise AttributeError(key) from None

    @property
    def key_file(self) -> str:
        return str(self.values["cluster_key_file"])

    def credentials(self, cwd: str = "") -> Secret:
        """The cluster key (key mode), or the TLS files (TLS mode), loaded and checked; relative
        paths are relative to ``cwd`` (the agent's working directory when another process asks).

        Raises:
            UsageError, OperationError, OSError: a file is missing or not what it should be.
        """
        if "tls_cert" in self.values:
            cert, key, ca = (os.path.join(cwd, self.values[name]) for name in ("tls_cert", "tls_key", "tls_ca"))
            return Credentials(tls=TlsFiles(cert, key, ca).check())
        path = os.path.join(cwd, self.key_file)
        keys = load_keys(path)
        if isinstance(keys, Keys) and (keys.agent_id != self.id or not keys.holds_role(self.role)):
            # A role key file is for one agent: its link keys are bound to that agent's id.
            raise UsageError(f"{path}: a role key file for {keys.agent_id or 'no agent'} "
                             f"({keys.describe_roles()}), not for the {self.role} agent {self.id}; "
                             f"make one with walbops keygen --from CLUSTER_KEY --role {self.role} --id {self.id}")
        return keys

    def log_path(self) -> str | None:
        path = self.values["log_file"]
        if path in ("-", "", None):
            return None
        return path if os.path.isabs(path) else os.path.join(self.values["base_dir"], path)


def _describe(error: jsonschema.ValidationError) -> str:
    where = ".".join(str(part) for part in error.absolute_path) or "(top level)"
    return f"key {where!r}: {error.message}"


def load(role: str, path: str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read, validate and complete an agent's configuration.

    Args:
        role: storage, proxy or archive.
        path: YAML file, or None for flags only.
        overrides: values given as flags; they win over the file.

    Raises:
        UsageError: naming the file, the key and what was expected.
    """
    if role not in ROLES:
        raise UsageError(f"unknown agent role {role!r} (expected {', '.join(ROLES)})")
    source = path or "<flags>"
    values: dict[str, Any] = {}
    if path is not None:
        loaded = load_yaml(path)
        if loaded is not None and not isinstance(loaded, dict):
            raise UsageError(f"{path}: expected a mapping of options")
        values.update(loaded or {})
    values.update({key: value for key, value in (overrides or {}).items() if value is not None})
    validator = jsonschema.Draft202012Validator(schema_for(role))
    errors = sorted(validator.iter_errors(values), key=lambda e: list(e.absolute_path))
    if errors:
        raise UsageError(f"{source}: {_describe(errors[0])}")
    missing = [key for key in REQUIRED[role] if key not in values]
    if missing:
        raise UsageError(f"{source}: key {missing[0]!r} is required for the {role} agent")
    tls = [key for key in TLS_KEYS if key in values]
    if tls and len(tls) < len(TLS_KEYS):
        raise UsageError(f"{source}: TLS mode needs all of {', '.join(TLS_KEYS)}; "
                         f"{', '.join(key for key in TLS_KEYS if key not in tls)} missing")
    if bool(tls) == ("cluster_key_file" in values):
        raise UsageError(f"{source}: give either cluster_key_file (key mode) or {', '.join(TLS_KEYS)} (TLS mode)")
    for option in OPTIONS:
        if role in option.roles and option.key not in values and option.default is not None:
            values[option.key] = option.default
    values.setdefault("id", socket.gethostname())
    values.setdefault("port", DEFAULT_PORTS[role])
    values.setdefault("base_dir", f"/var/lib/walbops/{role}")
    for option in OPTIONS:
        if role in option.roles and option.schema is _SIZE:
            values[option.key] = parse_size(values[option.key])
    return Config(role, values, source)


def add_flags(parser: argparse.ArgumentParser, role: str) -> None:
    """One flag per option (``--max-connections``), for the options a role takes."""
    parser.add_argument("--config", "-c", help="YAML configuration file")
    for option in OPTIONS:
        if role not in option.roles:
            continue
        flag = "--" + option.key.replace("_", "-")
        kind = option.schema.get("type")
        if kind == "boolean":
            parser.add_argument(flag, dest=option.key, action="store_const", const=True, default=None,
                                help=option.help)
        elif kind == "array":
            parser.add_argument(flag, dest=option.key, type=lambda text: text.split(","), default=None,
                                metavar="HOST:PORT[,HOST:PORT...]", help=option.help)
        elif option.key == "store":
            parser.add_argument(flag, dest=option.key, type=_parse_store, default=None,
                                metavar="dir:DIRECTORY|lvm:VG[/THINPOOL]", help=option.help)
        elif kind == "integer":
            parser.add_argument(flag, dest=option.key, type=int, default=None, help=option.help)
        elif kind == "number":
            parser.add_argument(flag, dest=option.key, type=float, default=None, help=option.help)
        else:
            parser.add_argument(flag, dest=option.key, default=None, help=option.help)


def _parse_store(text: str) -> dict[str, Any]:
    try:
        return parse_store_flag(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc} (dir[:DIRECTORY] or lvm:VG[/THINPOOL])") from None


def from_args(role: str, args: argparse.Namespace) -> Config:
    overrides = {option.key: getattr(args, option.key, None) for option in OPTIONS if role in option.roles}
    return load(role, args.config, overrides)
