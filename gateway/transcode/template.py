"""``google.api.http`` path templates: parse, match, rank (pure).

The syntax is google/api/http.proto's ("Path template syntax")::

    Template  = "/" Segments [ Verb ] ;
    Segments  = Segment { "/" Segment } ;
    Segment   = "*" | "**" | LITERAL | Variable ;
    Variable  = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb      = ":" LITERAL ;

``{id}`` is ``{id=*}``; ``*`` matches one non-empty segment, ``**`` zero or more, and only
as the last segment. A variable's value is percent-decoded; a variable of several segments
keeps ``%2F`` as it is (http.proto, RFC 6570 reserved expansion), so that an encoded slash
stays distinct from a separator.

Precedence, when several templates match one path, is ``PathTemplate.rank``: segment by
segment from the left, a literal beats ``*``, which beats ``**``; then a template with a
verb beats one without. Equal ranks are broken by the caller (``gateway.transcode.table``).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from urllib.parse import unquote

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# RFC 3986 pchar, without what the template syntax itself uses: ":", "=", "*", "{", "}".
LITERAL = re.compile(r"[A-Za-z0-9\-._~!$&'()+,;@%]+")
ENCODED_SLASH = re.compile(r"%2[fF]")

Bindings = tuple[tuple[tuple[str, ...], str], ...]  # (field path, decoded value) per variable


class TemplateError(ValueError):
    """A path template that breaks the syntax; the message says where."""


class SegmentKind(enum.IntEnum):
    """What one template segment matches; the value is its rank (lower: more specific)."""

    LITERAL = 0
    SINGLE = 1  # "*"
    MULTI = 2  # "**"


@dataclass(frozen=True)
class Segment:
    kind: SegmentKind
    literal: str = ""


@dataclass(frozen=True)
class Variable:
    """A field bound to the segments ``start`` up to ``end`` (exclusive) of the template."""

    field_path: tuple[str, ...]
    start: int
    end: int

    @property
    def name(self) -> str:
        return ".".join(self.field_path)


@dataclass(frozen=True)
class PathTemplate:
    """One parsed template: its segments, the variables over them, and its verb."""

    text: str
    segments: tuple[Segment, ...]
    variables: tuple[Variable, ...]
    verb: str = ""

    @property
    def rank(self) -> tuple[tuple[int, ...], int]:
        """The sort key of precedence: lower wins (see the module docstring)."""
        return tuple(int(s.kind) for s in self.segments), 0 if self.verb else 1

    def match(self, path: str) -> Bindings | None:
        """The variables' values when the raw (percent-encoded) ``path`` matches, else None."""
        if self.verb:
            suffix = ":" + self.verb
            if not path.endswith(suffix):
                return None
            path = path[: -len(suffix)]
        if not path.startswith("/"):
            return None
        parts = path[1:].split("/")
        count = len(self.segments)
        multi = count > 0 and self.segments[-1].kind is SegmentKind.MULTI
        # "**" matches zero or more segments; anything else, exactly one.
        fits = len(parts) >= count - 1 if multi else len(parts) == count
        if not count or not fits:
            return None
        for segment, part in zip(self.segments, parts, strict=False):
            if segment.kind is SegmentKind.MULTI:
                break
            if not part:
                return None
            if segment.kind is SegmentKind.LITERAL and _decoded(part) != segment.literal:
                return None
        values = []
        for variable in self.variables:
            end = len(parts) if multi and variable.end == count else variable.end
            single = variable.end - variable.start == 1 and (
                self.segments[variable.start].kind is not SegmentKind.MULTI
            )
            value = _value(parts[variable.start : end], single=single)
            if value is None:
                return None
            values.append((variable.field_path, value))
        return tuple(values)


def _decoded(part: str) -> str | None:
    try:
        return unquote(part, errors="strict")
    except UnicodeDecodeError:
        return None


def _value(parts: list[str], *, single: bool) -> str | None:
    """A variable's value: fully decoded for one segment; ``%2F`` kept for several."""
    if single:
        return _decoded(parts[0])
    pieces = [_decoded(piece) for piece in ENCODED_SLASH.split("/".join(parts))]
    if any(piece is None for piece in pieces):
        return None
    return "%2F".join(piece for piece in pieces if piece is not None)


def parse_template(text: str) -> PathTemplate:
    """Parse ``text``; raises ``TemplateError`` naming what is wrong."""
    if not text.startswith("/"):
        raise TemplateError(f"template {text!r} must start with '/'")
    body, verb = _split_verb(text[1:], text)
    segments: list[Segment] = []
    variables: list[Variable] = []
    for piece in _split_segments(body, text):
        if piece.startswith("{"):
            if not piece.endswith("}"):
                raise TemplateError(f"template {text!r}: a variable must be a whole segment")
            variable, inner = _variable(piece[1:-1], len(segments), text)
            for known in variables:
                shorter = min(len(known.field_path), len(variable.field_path))
                if known.field_path[:shorter] == variable.field_path[:shorter]:
                    what = (
                        f"{known.name!r} twice"
                        if known.name == variable.name
                        else f"both {known.name!r} and {variable.name!r}"
                    )
                    raise TemplateError(f"template {text!r} binds {what}")
            segments.extend(inner)
            variables.append(variable)
        else:
            segments.append(_segment(piece, text))
    if any(s.kind is SegmentKind.MULTI for s in segments[:-1]):
        raise TemplateError(f"template {text!r}: '**' must be the last segment")
    return PathTemplate(text, tuple(segments), tuple(variables), verb)


def _split_verb(rest: str, text: str) -> tuple[str, str]:
    """The segments and the verb (after the first ':' that follows the last '/'), with
    the braces checked: balanced and never nested."""
    depth, colon = 0, -1
    for i, char in enumerate(rest):
        if char == "{":
            depth += 1
            if depth > 1:
                raise TemplateError(f"template {text!r}: variables cannot be nested")
        elif char == "}":
            depth -= 1
            if depth < 0:
                raise TemplateError(f"template {text!r}: '}}' without '{{'")
        elif depth == 0 and char == "/":
            colon = -1
        elif depth == 0 and char == ":" and colon < 0:
            colon = i
    if depth:
        raise TemplateError(f"template {text!r}: '{{' without '}}'")
    if colon < 0:
        return rest, ""
    verb = rest[colon + 1 :]
    if not LITERAL.fullmatch(verb):
        raise TemplateError(f"template {text!r}: the verb {verb!r} is not a literal")
    return rest[:colon], verb


def _split_segments(body: str, text: str) -> list[str]:
    """``body`` split at each '/' outside braces; an empty segment is an error."""
    pieces, depth, current = [], 0, ""
    for char in body:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == "/" and depth == 0:
            pieces.append(current)
            current = ""
        else:
            current += char
    pieces.append(current)
    if any(not piece for piece in pieces):
        raise TemplateError(f"template {text!r} has an empty segment")
    return pieces


def _variable(inner: str, start: int, text: str) -> tuple[Variable, list[Segment]]:
    """The variable ``{inner}`` starting at segment ``start``, and its segments."""
    path, equals, pattern = inner.partition("=")
    names = tuple(path.split("."))
    if not all(IDENT.fullmatch(name) for name in names):
        raise TemplateError(f"template {text!r}: {path!r} is not a field path")
    if equals and not pattern:
        raise TemplateError(f"template {text!r}: the variable {path!r} has an empty pattern")
    segments = [_segment(piece, text) for piece in (pattern or "*").split("/")]
    return Variable(names, start, start + len(segments)), segments


def _segment(piece: str, text: str) -> Segment:
    if piece == "*":
        return Segment(SegmentKind.SINGLE)
    if piece == "**":
        return Segment(SegmentKind.MULTI)
    if not piece:
        raise TemplateError(f"template {text!r} has an empty segment")
    if not LITERAL.fullmatch(piece):
        raise TemplateError(f"template {text!r}: {piece!r} is not a literal segment")
    literal = _decoded(piece)
    if literal is None:
        raise TemplateError(f"template {text!r}: {piece!r} is not valid percent-encoding")
    return Segment(SegmentKind.LITERAL, literal)
