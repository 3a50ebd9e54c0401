"""Route matching: which back-end a message goes to (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from dialog.v1 import message_pb2
from gateway.config import RouteRule, RoutesConfig
from gateway.errors import NoRoute


@dataclass(frozen=True)
class Route:
    """Where a message goes, and the token scopes it requires (all of them)."""

    backend: str
    scopes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RouteTable:
    """Ordered rules on ``context.service`` and ``content.type``, then the default.

    The default back-end takes only messages that name no service; a message
    that names a service no rule knows is refused with ``NoRoute``. The matched rule's
    ``scopes`` are required of the caller; the default back-end requires none.
    """

    rules: tuple[RouteRule, ...]
    default_backend: str | None

    @classmethod
    def from_config(cls, routes: RoutesConfig) -> RouteTable:
        return cls(rules=routes.rules, default_backend=routes.default_backend)

    def match(self, msg: message_pb2.Message) -> str:
        """The back-end of ``msg``."""
        return self.resolve(msg).backend

    def resolve(self, msg: message_pb2.Message) -> Route:
        """The back-end of ``msg`` and the scopes its rule requires."""
        service = msg.context.service
        content_type = msg.content.type
        for rule in self.rules:
            if rule.service is not None and rule.service != service:
                continue
            if rule.content_type is not None and rule.content_type != content_type:
                continue
            return Route(rule.backend, rule.scopes)
        if not service and self.default_backend:
            return Route(self.default_backend)
        raise NoRoute(f"no route for service {service!r} and type {content_type!r}")
