"""Back-end instances: multi-address targets and Consul health answers, as data (pure).

A back-end's ``target`` is one address (``host:port``, resolved by gRPC's default
resolver) or a comma-separated list of IP literals (``127.0.0.1:50061,127.0.0.1:50071``),
which the channel reaches as ``ipv4:``/``ipv6:`` targets balanced by gRPC itself
(``SERVICE_CONFIG_JSON``). Consul discovery (``gateway.consul``) writes the healthy
instances it finds into the same list form, so that a change of instances is an ordinary
change of ``target`` and goes through the reload path.

The Consul rules come from its HTTP API documentation, "Blocking Queries":
https://developer.hashicorp.com/consul/api-docs/features/blocking
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # gateway.config validates targets with this module
    from gateway.config import RoutesConfig


@dataclasses.dataclass(frozen=True)
class OutlierPolicy:
    """When gRPC ejects an instance of a multi-address back-end (gRFC A50, "outlier
    detection", failure-percentage ejection): every ``interval_s``, an instance that had at
    least ``request_volume`` calls and failed at least ``threshold_percent`` of them is
    left out of the round robin for ``base_ejection_s`` times the number of its ejections
    in a row (at most ``max_ejection_s``), provided ``minimum_hosts`` instances had that
    many calls, and never more than ``max_ejection_percent`` of the instances at once."""

    interval_s: float = 10.0
    base_ejection_s: float = 30.0
    max_ejection_s: float = 300.0
    max_ejection_percent: int = 50
    threshold_percent: int = 85
    minimum_hosts: int = 2
    request_volume: int = 20

    def service_config(self) -> dict[str, Any]:
        """The gRPC service config (its ``loadBalancingConfig``) of this policy: round
        robin under ``outlier_detection_experimental``, grpcio's name for gRFC A50."""

        def duration(seconds: float) -> str:  # protobuf JSON: "1.5s"
            return f"{seconds:.3f}s"

        return {
            "loadBalancingConfig": [
                {
                    "outlier_detection_experimental": {
                        "interval": duration(self.interval_s),
                        "baseEjectionTime": duration(self.base_ejection_s),
                        "maxEjectionTime": duration(self.max_ejection_s),
                        "maxEjectionPercent": self.max_ejection_percent,
                        "failurePercentageEjection": {
                            "threshold": self.threshold_percent,
                            "enforcementPercentage": 100,
                            "minimumHosts": self.minimum_hosts,
                            "requestVolume": self.request_volume,
                        },
                        "childPolicy": [{"round_robin": {}}],
                    }
                }
            ]
        }

    def service_config_json(self) -> str:
        return json.dumps(self.service_config(), separators=(",", ":"))


# gRPC client-side balancing across every address of the target: round robin, with
# instances that fail most calls ejected for a while.
OUTLIER_POLICY = OutlierPolicy()
SERVICE_CONFIG: dict[str, Any] = OUTLIER_POLICY.service_config()
SERVICE_CONFIG_JSON = OUTLIER_POLICY.service_config_json()


class TargetError(ValueError):
    """A target that is not one address nor a list of IP-literal ``host:port`` addresses."""


def _split_address(address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise TargetError(f"{address!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return ipaddress.ip_address(host), int(port_text)
    except ValueError:
        raise TargetError(f"{address!r}: a list of addresses needs IP literals") from None


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets (RFC 3986 section 3.2.2)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def target_addresses(target: str) -> tuple[str, ...] | None:
    """The addresses of a comma-separated ``target``, or None for a one-address target
    (anything without a comma, left to gRPC's resolver). Raises ``TargetError``."""
    if "," not in target:
        return None
    addresses = tuple(part.strip() for part in target.split(","))
    families = {_split_address(a)[0].version for a in addresses}
    if len(families) > 1:
        raise TargetError("a list of addresses cannot mix IPv4 and IPv6")
    if len(set(addresses)) != len(addresses):
        raise TargetError("a list of addresses names one address twice")
    return addresses


def join_addresses(addresses: Sequence[str]) -> str:
    """The ``target`` that lists ``addresses`` (at least one)."""
    if not addresses:
        raise TargetError("no address")
    return ",".join(addresses)


def channel_target(target: str) -> str:
    """The gRPC channel target of a back-end ``target``: a list becomes
    ``ipv4:a,b`` or ``ipv6:[a],[b]`` (gRPC's naming doc, "ipv4:address[:port][,...]")."""
    addresses = target_addresses(target)
    if addresses is None:
        return target
    scheme = "ipv6" if _split_address(addresses[0])[0].version == 6 else "ipv4"
    return f"{scheme}:{','.join(addresses)}"


def balances(target: str) -> bool:
    """Whether the channel of ``target`` balances over several addresses."""
    return target_addresses(target) is not None


def healthy_addresses(body: Any) -> tuple[tuple[str, ...], int]:
    """The sorted, distinct addresses of the instances in a ``/v1/health/service/<name>``
    answer whose checks all pass, and how many entries were skipped (unusable: no port,
    a host name instead of an IP, a failing check). ``Service.Address`` is used, or
    ``Node.Address`` when it is empty (Consul's documented fallback)."""
    if not isinstance(body, list):
        raise ValueError("expected a JSON array of service entries")
    found: set[str] = set()
    skipped = 0
    for entry in body:
        try:
            service, node = entry["Service"], entry.get("Node") or {}
            checks = entry.get("Checks") or []
            host = service.get("Address") or node.get("Address") or ""
            port = service["Port"]
            passing = all(check.get("Status") == "passing" for check in checks)
            address = format_address(str(host), int(port))
            _split_address(address)
        except (AttributeError, KeyError, TypeError, ValueError):
            skipped += 1
            continue
        if passing:
            found.add(address)
        else:
            skipped += 1
    return tuple(sorted(found)), skipped


def next_index(previous: int, header: str | None) -> int:
    """The index of the next blocking query, from the ``X-Consul-Index`` of an answer.

    Consul's rules: an index that went backwards (a restarted or re-elected server)
    resets to 0, a full read; an index below 1 becomes 1, or every query would return at
    once. A missing or unreadable header also resets to 0."""
    try:
        index = int(header or "")
    except ValueError:
        return 0
    if index < previous:
        return 0
    return max(index, 1)


class Found(enum.Enum):
    """What a discovery answer means for the back-end's set of addresses."""

    CHANGED = "changed"
    UNCHANGED = "unchanged"
    EMPTY = "empty"  # no healthy instance: the last known set stays


def compare(current: Sequence[str] | None, found: Sequence[str]) -> Found:
    """Whether ``found`` replaces ``current``: an empty answer never does (dropping every
    instance would fail every call, while the last known ones may still answer)."""
    if not found:
        return Found.EMPTY
    return (
        Found.UNCHANGED if current is not None and tuple(current) == tuple(found) else Found.CHANGED
    )


def with_discovered(routes: RoutesConfig, found: Mapping[str, Sequence[str]]) -> RoutesConfig:
    """``routes`` with the target of each back-end that has a ``consul_service`` and a
    known set of addresses in ``found`` (by back-end name) replaced by that set."""
    backends = tuple(
        dataclasses.replace(b, target=join_addresses(found[b.name]))
        if b.consul_service and found.get(b.name)
        else b
        for b in routes.backends
    )
    return dataclasses.replace(routes, backends=backends)


def consul_services(routes: RoutesConfig) -> dict[str, str]:
    """The Consul service each back-end of ``routes`` follows, by back-end name."""
    return {b.name: b.consul_service for b in routes.backends if b.consul_service}


@dataclasses.dataclass(frozen=True)
class WatchChanges:
    """How the blocking-query loops must change to follow new back-ends (by name)."""

    stop: tuple[str, ...] = ()  # removed, or following another service now
    start: tuple[str, ...] = ()  # added, or following another service now


def watch_changes(current: Mapping[str, str], wanted: Mapping[str, str]) -> WatchChanges:
    """The loops to stop and start to go from following ``current`` to following ``wanted``
    (both: back-end name -> Consul service). A back-end whose service changed is in both:
    what was found for the old service says nothing about the new one."""
    stop = tuple(b for b, service in current.items() if wanted.get(b) != service)
    start = tuple(b for b, service in wanted.items() if current.get(b) != service)
    return WatchChanges(stop=stop, start=start)


def retry_delay_s(failures: int, rand: float, *, max_s: float = 30.0) -> float:
    """The pause after ``failures`` failed queries in a row (1-based): exponential from
    0.5 s up to ``max_s``, with full jitter (``rand`` in [0, 1)); never below 0.1 s so
    that a failing Consul is not queried in a tight loop."""
    bound = min(max_s, 0.5 * float(2 ** min(failures - 1, 16)))
    return max(0.1, bound * rand)
