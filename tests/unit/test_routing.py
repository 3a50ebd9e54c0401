"""Route matching (gateway.routing): ordered rules, then the default back-end."""

from __future__ import annotations

import pytest

from dialog.v1 import message_pb2
from gateway.config import RouteRule, RoutesConfig
from gateway.errors import NoRoute
from gateway.routing import RouteTable

RULES = (
    RouteRule(backend="tasks-fast", service="tasks", content_type="task.list"),
    RouteRule(backend="tasks", service="tasks"),
    RouteRule(backend="chat", service="chat"),
    RouteRule(backend="chat-again", service="chat"),  # shadowed by the rule above
    RouteRule(backend="uploads", content_type="file.upload"),
)


def _msg(service: str = "", content_type: str = "text") -> message_pb2.Message:
    msg = message_pb2.Message()
    msg.context.service = service
    msg.content.type = content_type
    return msg


# (name, rules, default, service, content_type, expected back-end)
MATCH_CASES = [
    ("service rule", RULES, "chat", "tasks", "task.create", "tasks"),
    (
        "service and type: more specific rule listed first",
        RULES,
        "chat",
        "tasks",
        "task.list",
        "tasks-fast",
    ),
    ("first matching rule wins", RULES, None, "chat", "text", "chat"),
    ("content_type matcher alone, any service", RULES, None, "", "file.upload", "uploads"),
    ("content_type matcher alone, with a service", RULES, None, "photos", "file.upload", "uploads"),
    ("empty service goes to the default", RULES, "chat", "", "text", "chat"),
    ("default is not a rule: empty service, other default", RULES, "tasks", "", "text", "tasks"),
    ("catch-all rule", (RouteRule(backend="all"),), None, "anything", "x", "all"),
    ("no rules, default only", (), "chat", "", "text", "chat"),
]


@pytest.mark.parametrize(
    ("rules", "default", "service", "content_type", "expected"),
    [c[1:] for c in MATCH_CASES],
    ids=[c[0] for c in MATCH_CASES],
)
def test_match(
    rules: tuple[RouteRule, ...],
    default: str | None,
    service: str,
    content_type: str,
    expected: str,
) -> None:
    table = RouteTable(rules=rules, default_backend=default)
    assert table.match(_msg(service, content_type)) == expected


# (name, rules, default, service, content_type)
NO_ROUTE_CASES = [
    ("unknown service even with a default", RULES, "chat", "weather", "text"),
    (
        "service rule with another content_type does not match",
        (RouteRule(backend="t", service="tasks", content_type="task.list"),),
        "chat",
        "tasks",
        "text",
    ),
    ("no default and empty service", RULES, None, "", "text"),
    ("empty default and empty service", RULES, "", "", "text"),
    ("no rules, no default", (), None, "", "text"),
]


@pytest.mark.parametrize(
    ("rules", "default", "service", "content_type"),
    [c[1:] for c in NO_ROUTE_CASES],
    ids=[c[0] for c in NO_ROUTE_CASES],
)
def test_no_route(
    rules: tuple[RouteRule, ...], default: str | None, service: str, content_type: str
) -> None:
    table = RouteTable(rules=rules, default_backend=default)
    with pytest.raises(NoRoute) as info:
        table.match(_msg(service, content_type))
    assert repr(service) in info.value.message


def test_from_config() -> None:
    routes = RoutesConfig(backends=(), rules=RULES, default_backend="chat")
    table = RouteTable.from_config(routes)
    assert table.rules == RULES
    assert table.default_backend == "chat"
    assert table.match(_msg("tasks")) == "tasks"
