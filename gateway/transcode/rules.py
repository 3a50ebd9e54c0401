"""The ``google.api.http`` rules of a method, read from its options and checked against its
request and response messages (pure).

A rule (google/api/http.proto, ``HttpRule``) gives one HTTP method and path template
(``get``, ``put``, ``post``, ``delete``, ``patch``, or ``custom`` with any method, ``*``
for every method), the request field the body carries (``body``: none, ``*`` for the whole
request, or one top-level field), the response field the answer carries (``response_body``:
the whole response when empty), and ``additional_bindings``, rules of their own, one level
deep. ``method_rules`` turns each into an ``HttpBinding``; a binding that breaks the syntax
or names a field the messages do not have is left out, and a problem says why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from google.api import annotations_pb2, http_pb2  # type: ignore[import-untyped]
from google.protobuf.descriptor import Descriptor, MethodDescriptor

from gateway.transcode.fields import FieldPathError, is_scalar_like, resolve
from gateway.transcode.template import PathTemplate, TemplateError, parse_template

ANY_METHOD = "*"  # custom kind "*": the rule leaves the HTTP method open
# RFC 9110 section 5.6.2: an HTTP method is a token.
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
WHOLE = "*"  # body "*": every field the path does not bind


class RuleError(ValueError):
    """A rule that cannot be used; the message says why."""


@dataclass(frozen=True)
class HttpBinding:
    """One HTTP method and path template of a gRPC method."""

    http_method: str  # upper case, or ANY_METHOD
    template: PathTemplate
    body: str = ""  # "", WHOLE or a top-level request field
    response_body: str = ""  # "" (the whole response) or a top-level response field


@dataclass(frozen=True)
class MethodRules:
    """The usable bindings of a method, in declaration order, and why others are not."""

    bindings: tuple[HttpBinding, ...] = ()
    problems: tuple[str, ...] = ()


def http_rule(method: MethodDescriptor) -> http_pb2.HttpRule | None:
    """The method's ``google.api.http`` option, or None."""
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return None
    rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
    return rule


def method_rules(method: MethodDescriptor) -> MethodRules:
    """Every binding of ``method``: its rule, then its additional bindings."""
    rule = http_rule(method)
    if rule is None:
        return MethodRules()
    bindings: list[HttpBinding] = []
    problems: list[str] = []
    for index, each in enumerate([rule, *rule.additional_bindings]):
        try:
            bindings.append(binding(each, method, additional=index > 0))
        except RuleError as exc:
            which = "its rule" if index == 0 else f"its additional binding {index}"
            name = f"{method.containing_service.full_name}/{method.name}"
            problems.append(f"{name}: {which} is not used: {exc}")
    return MethodRules(tuple(bindings), tuple(problems))


def binding(rule: http_pb2.HttpRule, method: MethodDescriptor, *, additional: bool) -> HttpBinding:
    """One rule of ``method`` as a binding; raises ``RuleError``."""
    if additional and rule.additional_bindings:
        raise RuleError("an additional binding cannot have additional bindings")
    http_method, path = _pattern(rule)
    try:
        template = parse_template(path)
    except TemplateError as exc:
        raise RuleError(str(exc)) from exc
    request: Descriptor = method.input_type
    for variable in template.variables:
        try:
            field = resolve(request, variable.field_path)[-1]
        except FieldPathError as exc:
            raise RuleError(f"path variable {variable.name!r}: {exc}") from exc
        if field.is_repeated or not is_scalar_like(field):
            raise RuleError(f"path variable {variable.name!r} is not a singular scalar field")
    if rule.body and http_method == "GET":
        raise RuleError("a GET binding has no body")
    if rule.body not in ("", WHOLE) and rule.body not in request.fields_by_name:
        raise RuleError(f"body {rule.body!r} is not a field of {request.full_name}")
    response: Descriptor = method.output_type
    if rule.response_body and rule.response_body not in response.fields_by_name:
        raise RuleError(
            f"response_body {rule.response_body!r} is not a field of {response.full_name}"
        )
    return HttpBinding(http_method, template, rule.body, rule.response_body)


def _pattern(rule: http_pb2.HttpRule) -> tuple[str, str]:
    """The HTTP method and the path template of ``rule``."""
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise RuleError("the rule names no HTTP method")
    if kind == "custom":
        custom = rule.custom.kind.upper()
        if custom != ANY_METHOD and not TOKEN.fullmatch(custom):
            raise RuleError(f"custom method {rule.custom.kind!r} is not an HTTP method")
        return custom, rule.custom.path
    path: str = getattr(rule, kind)
    return kind.upper(), path
