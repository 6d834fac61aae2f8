"""The agent's configuration: which server, who it is (its GUID and the secret that proves
it), where its state lives, whom it trusts (the snapshot signer's key, the fleet's CA)."""

from __future__ import annotations

import ipaddress
import math
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from mcast.discovery import Rank
from mcast.errors import UsageError
from mcast.scope import SAFE_GROUPS
from mcast.udp import DISCOVERY_GROUP, DISCOVERY_PORT

from .runas import DEFAULT_USER, RunAsError, check_default


class ConfigError(UsageError, ValueError):
    """A configuration value is unusable; the message says which and why."""


@dataclass(frozen=True)
class AgentConfig:
    server_url: str  # the Notification Server, e.g. http://127.0.0.1:8080
    guid: str  # this computer's GUID
    state_dir: Path  # SQLite state + package cache
    trust_key: Path  # PEM public key of the snapshot signer (NS DATA/signing.pub)
    ip: str | None = None  # sent to getPackageInfo; default: the address that reaches the NS
    interface: str = "127.0.0.1"  # multicast interface handed to the engine
    discovery_group: str = DISCOVERY_GROUP  # where sessions are announced and solicited
    discovery_port: int = DISCOVERY_PORT
    command_timeout_s: float = 3600.0
    check_in_interval_s: float | None = None  # overrides the policy's checkInIntervalMins
    http_timeout_s: float = 30.0
    retry_base_s: float = 1.0  # back-off of check-ins and of the outbox ...
    retry_cap_s: float = 300.0  # ... doubles from base up to this cap, with jitter
    output_tail_bytes: int = 2048
    rank: Rank = Rank.WIRED  # what this machine weighs in a multicast master election
    yield_bandwidth: bool = False  # sessions this agent masters back off for other traffic
    download_attempts: int = 8  # failed download attempts before a job fails (see core) ...
    download_retry_base_s: float = 30.0  # ... backing off from this (capped at retry_cap_s)
    # whom a task that names no run-as user (``system``) runs as; never root (agent.runas)
    run_as_default: str = DEFAULT_USER
    secret_file: Path | None = None  # this computer's secret (mcast.fleet_auth): signs requests
    enrol: bool = False  # make the secret if missing and ask the server to enrol it
    ca_file: Path | None = None  # the fleet's CA (NS DATA/tls/ca.pem), pinned for https

    def __post_init__(self) -> None:
        parts = urlsplit(self.server_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"server URL {self.server_url!r} is not an http(s) URL")
        try:
            object.__setattr__(self, "guid", str(uuid.UUID(self.guid.strip().strip("{}"))))
        except ValueError:
            raise ConfigError(f"GUID {self.guid!r} is not a GUID") from None
        if not (math.isfinite(self.command_timeout_s) and self.command_timeout_s > 0):
            raise ConfigError("the command timeout must be positive")
        interval = self.check_in_interval_s
        if interval is not None and not (math.isfinite(interval) and interval > 0):
            raise ConfigError("the check-in interval must be positive")
        try:
            ipaddress.IPv4Address(self.interface)
        except ValueError:
            raise ConfigError(f"interface {self.interface!r} is not an IPv4 address") from None
        if self.ip is not None:
            try:
                ipaddress.ip_address(self.ip)
            except ValueError:
                raise ConfigError(f"agent address {self.ip!r} is not an IP address") from None
        if self.download_attempts < 1:
            raise ConfigError("download attempts must be at least 1")
        base = self.download_retry_base_s
        if not (math.isfinite(base) and base > 0):
            raise ConfigError("the download retry back-off must be positive")
        if not 0 < self.discovery_port < 65536:
            raise ConfigError(f"discovery port {self.discovery_port} is not a UDP port")
        try:
            safe = ipaddress.ip_address(self.discovery_group) in SAFE_GROUPS
        except ValueError:
            safe = False
        if not safe:
            raise ConfigError(f"discovery group {self.discovery_group!r} is not in {SAFE_GROUPS}")
        try:
            check_default(self.run_as_default)
        except RunAsError as exc:
            raise ConfigError(str(exc)) from None
        object.__setattr__(self, "server_url", self.server_url.rstrip("/"))
        object.__setattr__(self, "state_dir", Path(self.state_dir))
        object.__setattr__(self, "trust_key", Path(self.trust_key))
        for name in ("secret_file", "ca_file"):
            value = getattr(self, name)
            object.__setattr__(self, name, None if value is None else Path(value))
        if self.enrol and self.secret_file is None:
            raise ConfigError("enrolment needs a secret file to keep the secret in")

    def agent_ip(self) -> str:
        """``ip`` if given, else the local address a connection to the server would use."""
        if self.ip:
            return self.ip
        host = urlsplit(self.server_url).hostname or "127.0.0.1"
        parts = urlsplit(self.server_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((host, port))  # UDP connect sends nothing: it only picks a route
                return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"
