"""The rules file: which tag on which helpdesk asks Bugpilot for which action.

A rules file is YAML with ``version: 1`` and a list of rules. Loading it checks
everything at once and raises ``RulesError`` with one line per problem, each in
the form ``<file>:<line>: rules[<i>].<key>: <reason>``, so that ``relay rules
check`` and start-up can show every fault in one go.

Templates (``description``, ``note``, ``offline_note``, ``report_note``) may only
name the fixed placeholders as ``{name}``; ``{{`` and ``}}`` are literal braces.
Attribute and item access, positional fields, conversions and format specs are
refused when the file is loaded, and ``render`` never evaluates them either: it
only ever looks a plain name up in the values it is given.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from marshmallow import RAISE, Schema, ValidationError, fields, validates_schema
from marshmallow.types import ErrorMessages

from relay.config import parse_duration
from relay.errors import RulesError

ACTIONS = ("upload-screenshot", "upload-session", "show-recording-ui")
PROVIDERS = ("zendesk", "intercom")
USER_KEYS = ("email", "external_id")
PLACEHOLDERS = frozenset(
    {
        "ticket_id",
        "provider",
        "tag",
        "rule",
        "action",
        "user_id",
        "subject",
        "session_info_url",
        "report_url",
        "error",
    }
)

DEFAULT_NOTE = "Bugpilot {action} requested by relay: {session_info_url}"
DEFAULT_OFFLINE_NOTE = (
    "Bugpilot {action} not captured: the user was not online in the app. "
    "Add the tag {tag} again once they are."
)
DEFAULT_REPORT_NOTE = "Bugpilot report ready: {report_url}"

# The description goes to Bugpilot with the request, before any of these exist.
_NOT_YET_KNOWN = {"description": ("session_info_url", "report_url", "error")}

_FORMATTER = string.Formatter()
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

KeyPath = tuple[str, ...]
Found = tuple[KeyPath, str, int]  # path, reason, line (0: look the path up)


@dataclass(frozen=True, kw_only=True)
class Rule:
    """One rule: when ``tag`` is added on ``provider``, run ``action``."""

    name: str
    tag: str
    provider: str | None = None
    action: str
    user: str = "email"
    description: str | None = None
    note: str = DEFAULT_NOTE
    offline_note: str = DEFAULT_OFFLINE_NOTE
    report_note: str = DEFAULT_REPORT_NOTE
    wait_for_user: float = 0.0
    remove_tag: bool = False
    follow_report: bool = False
    line: int = 0

    def to_dict(self) -> dict[str, object]:
        """A JSON-able snapshot of the rule, stored with each job."""
        return {
            "name": self.name,
            "tag": self.tag,
            "provider": self.provider,
            "action": self.action,
            "user": self.user,
            "description": self.description,
            "note": self.note,
            "offline_note": self.offline_note,
            "report_note": self.report_note,
            "wait_for_user": self.wait_for_user,
            "remove_tag": self.remove_tag,
            "follow_report": self.follow_report,
            "line": self.line,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rule:
        """The rule a ``to_dict`` snapshot describes; missing keys take defaults."""
        provider = data.get("provider")
        description = data.get("description")
        return cls(
            name=str(data["name"]),
            tag=str(data["tag"]),
            provider=None if provider is None else str(provider),
            action=str(data["action"]),
            user=str(data.get("user", "email")),
            description=None if description is None else str(description),
            note=str(data.get("note", DEFAULT_NOTE)),
            offline_note=str(data.get("offline_note", DEFAULT_OFFLINE_NOTE)),
            report_note=str(data.get("report_note", DEFAULT_REPORT_NOTE)),
            wait_for_user=float(data.get("wait_for_user", 0.0)),
            remove_tag=bool(data.get("remove_tag", False)),
            follow_report=bool(data.get("follow_report", False)),
            line=int(data.get("line", 0)),
        )

    @property
    def providers(self) -> tuple[str, ...]:
        """The providers this rule listens to."""
        return PROVIDERS if self.provider is None else (self.provider,)


@dataclass(frozen=True)
class Rules:
    """A loaded rules file, indexed by (provider, tag) for matching."""

    rules: tuple[Rule, ...]
    source: str = "<string>"
    _index: dict[tuple[str, str], tuple[Rule, ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        index: dict[tuple[str, str], list[Rule]] = {}
        for rule in self.rules:
            for provider in rule.providers:
                index.setdefault((provider, rule.tag), []).append(rule)
        frozen = {key: tuple(found) for key, found in index.items()}
        object.__setattr__(self, "_index", frozen)

    def __len__(self) -> int:
        return len(self.rules)

    def get(self, name: str) -> Rule | None:
        """The rule called ``name``, if there is one."""
        return next((rule for rule in self.rules if rule.name == name), None)

    def match(self, provider: str, tag: str) -> list[Rule]:
        """The rules that fire when ``tag`` is added on ``provider``, in file order."""
        return list(self._index.get((provider, tag), ()))

    def match_tags(self, provider: str, tags: Iterable[str]) -> list[tuple[str, Rule]]:
        """(tag, rule) for each rule that fires for an event; a rule fires once."""
        fired: list[tuple[str, Rule]] = []
        seen: set[str] = set()
        for tag in tags:
            for rule in self._index.get((provider, tag), ()):
                if rule.name not in seen:
                    seen.add(rule.name)
                    fired.append((tag, rule))
        return fired

    def explain(self, provider: str, tag: str) -> list[str]:
        """Human lines: which rules fire for (provider, tag), why the others do not."""
        fired = self.match(provider, tag)
        lines = [
            f"{len(fired)} of {len(self.rules)} rules fire for tag {tag!r} "
            f"on {provider} ({self.source})"
        ]
        if provider not in PROVIDERS:
            lines.append(
                f"unknown provider {provider!r}: relay knows {', '.join(PROVIDERS)}"
            )
        for rule in self.rules:
            where = f"{rule.name} (line {rule.line})"
            if rule.tag != tag:
                reason = f"watches tag {rule.tag!r}, not {tag!r}"
                if rule.tag.casefold() == tag.casefold():
                    reason += " (tags must match exactly, including case)"
                lines.append(f"skips {where}: {reason}")
            elif provider not in rule.providers:
                only = rule.provider or " and ".join(PROVIDERS)
                lines.append(f"skips {where}: only for {only}, not {provider}")
            else:
                lines.append(f"fires {where}: {rule.action} {_summary(rule)}")
        return lines


def render(template: str, values: Mapping[str, object]) -> str:
    """Fill the placeholders of ``template`` from ``values``; never raises."""
    try:
        pieces = list(_FORMATTER.parse(template))
    except ValueError:
        # Unbalanced braces: the file check refuses these, so show it as it is.
        return template

    out: list[str] = []
    for literal, name, spec, conversion in pieces:
        out.append(literal)
        if name is None:
            continue
        if name in PLACEHOLDERS and not spec and conversion is None:
            out.append(_text(values, name))
        else:
            # Anything but a plain placeholder is shown as written, never evaluated.
            out.append(_field_text(name, spec, conversion))
    return "".join(out)


def template_problems(template: str) -> list[str]:
    """Why ``template`` is not an allowed template; empty when it is fine."""
    try:
        pieces = list(_FORMATTER.parse(template))
    except ValueError as exc:
        return [f"unbalanced braces ({exc}); write {{{{ and }}}} for literal braces"]

    problems: list[str] = []
    for _literal, name, spec, conversion in pieces:
        if name is None:
            continue
        text = _field_text(name, spec, conversion)
        base = re.split(r"[.\[]", name, maxsplit=1)[0]
        if name != base:
            kind = "attribute access" if name[len(base)] == "." else "item access"
            problems.append(f"{text}: {kind} is not allowed; use a plain placeholder")
        elif base == "" or base.isdigit():
            problems.append(
                f"{text}: positional fields are not allowed; name one of {_known()}"
            )
        elif base not in PLACEHOLDERS:
            hint = _did_you_mean(base, PLACEHOLDERS)
            problems.append(f"{text}: unknown placeholder{hint}; use one of {_known()}")
        if conversion is not None:
            problems.append(
                f"{text}: conversions such as !{conversion} are not allowed"
            )
        if spec:
            problems.append(f"{text}: format specs such as :{spec} are not allowed")
    return list(dict.fromkeys(problems))


def parse_rules(text: str, source: str = "<string>") -> Rules:
    """Parse and check a rules file's text; ``RulesError`` lists every problem."""
    empty = f"{source}:1: the file is empty; it needs version: 1 and rules"
    if not text.strip():
        raise RulesError(source, [empty])

    try:
        node, data = _compose(text)
    except yaml.YAMLError as exc:
        raise RulesError(source, [_yaml_problem(source, text, exc)]) from None
    except RecursionError:
        problem = f"{source}:1: invalid YAML: nested too deeply"
        raise RulesError(source, [problem]) from None
    if node is None or data is None:
        raise RulesError(source, [empty])

    lines, found = _walk(node)
    if not isinstance(data, dict):
        reason = "the file must be a mapping with the keys version and rules"
        found.append(((), reason, 0))
        raise RulesError(source, _format(source, found, lines))

    loaded: dict[str, Any] = {}
    try:
        loaded = _FileSchema().load(data)
    except ValidationError as exc:
        found.extend(_flatten(exc.messages, ()))
    found.extend(_duplicate_names(data, lines))
    if found:
        raise RulesError(source, _format(source, found, lines))

    rules = tuple(
        _build(item, lines.get(("rules", str(i)), 0))
        for i, item in enumerate(loaded["rules"])
    )
    return Rules(rules, source)


def load_rules(path: str | os.PathLike[str]) -> Rules:
    """Read and check the rules file at ``path``."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise RulesError(
            source, [f"{source}: cannot read the rules file: {reason}"]
        ) from None
    except UnicodeDecodeError as exc:
        raise RulesError(source, [f"{source}: not UTF-8 text: {exc.reason}"]) from None
    return parse_rules(text, source)


def describe(rules: Rules) -> str:
    """The listing ``relay rules check`` prints for a valid rules file."""
    count = len(rules.rules)
    lines = [f"{rules.source}: {count} rule{'' if count == 1 else 's'}, all valid"]
    for rule in rules.rules:
        where = rule.provider or "zendesk, intercom"
        lines.append(
            f"  {rule.name} (line {rule.line}): tag {rule.tag!r} on {where}"
            f" -> {rule.action} {_summary(rule)}"
        )
    return "\n".join(lines)


# Schemas ------------------------------------------------------------------------


def _template(value: str) -> None:
    problems = template_problems(value)
    if problems:
        raise ValidationError(problems)


def _not_blank(value: str) -> None:
    if not value.strip():
        raise ValidationError("must not be empty")


def _choice(choices: Iterable[str], what: str) -> Any:
    options = tuple(choices)

    def check(value: str) -> None:
        if value not in options:
            hint = _did_you_mean(value, options)
            raise ValidationError(
                f"unknown {what} {value!r}{hint}; use one of {', '.join(options)}"
            )

    return check


def _rule_name(value: str) -> None:
    if not _NAME.match(value):
        raise ValidationError(
            "must be 1 to 64 letters, digits, '_', '-' or '.', starting with a "
            "letter or digit (it becomes a metric label)"
        )


def _text_field(**options: Any) -> fields.String:
    messages: ErrorMessages = {
        "required": "is required",
        "null": "must not be empty",
        "invalid": "must be a string; put it in quotes",
    }
    return fields.String(error_messages=messages, **options)


class _Flag(fields.Field[bool]):
    """True or false, and nothing YAML or marshmallow would merely coerce."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> bool:
        if isinstance(value, bool):
            return value
        raise ValidationError("must be true or false")


class _Duration(fields.Field[float]):
    """Seconds, written as a number or with a unit: 30s, 30m, 2h."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> float:
        seconds = -1.0
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                seconds = parse_duration(value)
        if not math.isfinite(seconds) or seconds < 0:
            raise ValidationError(
                f"must be a duration such as 30s, 30m or 2h, or a number of "
                f"seconds; got {value!r}"
            )
        return seconds


class _Strict(Schema):
    class Meta:
        unknown = RAISE

    # marshmallow merges this class attribute into each instance's messages.
    error_messages: dict[str, str] = {  # noqa: RUF012
        "unknown": "unknown key",
        "type": "must be a mapping",
    }


class _WhenSchema(_Strict):
    tag = _text_field(required=True, validate=_not_blank)
    provider = _text_field(
        load_default=None, allow_none=True, validate=_choice(PROVIDERS, "provider")
    )

    # Run even when other keys are wrong, so that every problem shows at once.
    @validates_schema(skip_on_field_errors=False)
    def _zendesk_tag(self, data: dict[str, Any], **kwargs: Any) -> None:
        tag = data.get("tag")
        if tag is None:
            return
        if tag != tag.strip():
            raise ValidationError("must not start or end with spaces", "tag")
        if data.get("provider") == "zendesk" and (
            tag != tag.lower() or any(c.isspace() for c in tag)
        ):
            raise ValidationError(
                "Zendesk tags are lower case without spaces, so this one never fires",
                "tag",
            )


_NESTED_MESSAGES: ErrorMessages = {
    "required": "is required",
    "null": "must be a mapping",
}


class _RuleSchema(_Strict):
    name = _text_field(required=True, validate=_rule_name)
    when = fields.Nested(_WhenSchema, required=True, error_messages=_NESTED_MESSAGES)
    action = _text_field(required=True, validate=_choice(ACTIONS, "action"))
    user = _text_field(load_default="email", validate=_choice(USER_KEYS, "user"))
    description = _text_field(load_default=None, allow_none=True, validate=_template)
    note = _text_field(load_default=DEFAULT_NOTE, validate=[_not_blank, _template])
    offline_note = _text_field(
        load_default=DEFAULT_OFFLINE_NOTE, validate=[_not_blank, _template]
    )
    report_note = _text_field(
        load_default=DEFAULT_REPORT_NOTE, validate=[_not_blank, _template]
    )
    wait_for_user = _Duration(load_default=0.0)
    remove_tag = _Flag(load_default=False)
    follow_report = _Flag(load_default=False)

    @validates_schema(skip_on_field_errors=False)
    def _description_placeholders(self, data: dict[str, Any], **kwargs: Any) -> None:
        for key, unknown in _NOT_YET_KNOWN.items():
            used = _placeholders(data.get(key) or "")
            late = [name for name in unknown if name in used]
            if late:
                names = ", ".join(f"{{{name}}}" for name in late)
                raise ValidationError(
                    f"{names} not known yet when the {key} is sent to Bugpilot", key
                )


def _version(value: Any) -> None:
    if type(value) is not int or value != 1:
        raise ValidationError(
            f"must be 1, the only version this relay reads; got {value!r}"
        )


def _at_least_one(items: list[Any]) -> None:
    if not items:
        raise ValidationError("must list at least one rule")


class _FileSchema(_Strict):
    version = fields.Raw(
        required=True,
        validate=_version,
        error_messages={
            "required": "is required",
            "null": "must be 1, the only version this relay reads; got None",
        },
    )
    rules = fields.List(
        fields.Nested(_RuleSchema, error_messages=_NESTED_MESSAGES),
        required=True,
        validate=_at_least_one,
        error_messages={
            "required": "is required",
            "null": "must list at least one rule",
            "invalid": "must be a list of rules",
        },
    )


_KEYS: dict[int, tuple[str, ...]] = {
    0: tuple(_FileSchema().fields),
    2: tuple(_RuleSchema().fields),
    3: tuple(_WhenSchema().fields),
}


# Loading helpers -------------------------------------------------------------------


def _compose(text: str) -> tuple[yaml.Node | None, Any]:
    loader = _YAML_LOADER(text)
    try:
        node = loader.get_single_node()
        data = None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()
    return node, data


def _yaml_problem(source: str, text: str, exc: yaml.YAMLError) -> str:
    line = 1
    reason = str(exc).splitlines()[0] if str(exc) else "cannot be parsed"
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        if mark is not None:
            line = mark.line + 1
        reason = "; ".join(str(part) for part in (exc.context, exc.problem) if part)
    elif isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        reason = f"unacceptable character #x{exc.character:04x}"
    return f"{source}:{line}: invalid YAML: {reason}"


def _walk(root: yaml.Node) -> tuple[dict[KeyPath, int], list[Found]]:
    """Line of each key and list item by path, and the keys written twice."""
    lines: dict[KeyPath, int] = {(): root.start_mark.line + 1}
    duplicates: list[Found] = []
    stack: list[tuple[yaml.Node, KeyPath]] = [(root, ())]
    visited: set[int] = set()
    while stack:
        node, path = stack.pop()
        if id(node) in visited:
            continue  # an alias of a node already seen, possibly of itself
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                child = (*path, key)
                if key in seen and key_node.tag != "tag:yaml.org,2002:merge":
                    line = key_node.start_mark.line + 1
                    reason = "written twice; each key may appear once"
                    duplicates.append((child, reason, line))
                    continue
                seen.add(key)
                lines[child] = key_node.start_mark.line + 1
                stack.append((value_node, child))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                child = (*path, str(i))
                lines[child] = item.start_mark.line + 1
                stack.append((item, child))
    return lines, duplicates


def _flatten(messages: Any, path: KeyPath) -> list[Found]:
    if isinstance(messages, dict):
        found: list[Found] = []
        for key, value in messages.items():
            child = path if key == "_schema" else (*path, str(key))
            found.extend(_flatten(value, child))
        return found
    if isinstance(messages, list | tuple):
        return [item for message in messages for item in _flatten(message, path)]
    message = str(messages)
    if message == "unknown key" and path:
        allowed = _KEYS.get(len(path) - 1, ())
        hint = _did_you_mean(path[-1], allowed)
        message = f"unknown key{hint}; allowed: {', '.join(allowed)}"
    return [(path, message, 0)]


def _duplicate_names(data: dict[Any, Any], lines: dict[KeyPath, int]) -> list[Found]:
    items = data.get("rules")
    if not isinstance(items, list):
        return []
    first: dict[str, int] = {}
    found: list[Found] = []
    for i, item in enumerate(items):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            continue
        if name in first:
            j = first[name]
            where = lines.get(("rules", str(j), "name"), 0)
            found.append(
                (
                    ("rules", str(i), "name"),
                    f"duplicate rule name {name!r}; rules[{j}] on line {where} has it",
                    0,
                )
            )
        else:
            first[name] = i
    return found


def _format(source: str, found: list[Found], lines: dict[KeyPath, int]) -> list[str]:
    def line_of(path: KeyPath, line: int = 0) -> int:
        if line:
            return line
        for end in range(len(path), -1, -1):
            line = lines.get(path[:end], 0)
            if line:
                return line
        return 1

    ordered = sorted(found, key=lambda item: (line_of(item[0], item[2]), item[0]))
    problems = []
    for path, message, line in ordered:
        where = _path_text(path)
        prefix = f"{where}: " if where else ""
        problems.append(f"{source}:{line_of(path, line)}: {prefix}{message}")
    return list(dict.fromkeys(problems))


def _path_text(path: KeyPath) -> str:
    text = ""
    for i, part in enumerate(path):
        if i == 1 and path[0] == "rules" and part.isdigit():
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def _build(item: dict[str, Any], line: int) -> Rule:
    when = item["when"]
    return Rule(
        name=item["name"],
        tag=when["tag"],
        provider=when["provider"],
        action=item["action"],
        user=item["user"],
        description=item["description"],
        note=item["note"],
        offline_note=item["offline_note"],
        report_note=item["report_note"],
        wait_for_user=item["wait_for_user"],
        remove_tag=item["remove_tag"],
        follow_report=item["follow_report"],
        line=line,
    )


# Small helpers ---------------------------------------------------------------------


def _text(values: Mapping[str, object], name: str) -> str:
    try:
        value = values.get(name)
        return "" if value is None else str(value)
    except Exception:
        # A value that cannot even print itself still must not stop a note.
        return ""


def _field_text(name: str, spec: str | None, conversion: str | None) -> str:
    text = "{" + name
    if conversion is not None:
        text += "!" + conversion
    if spec:
        text += ":" + spec
    return text + "}"


def _placeholders(template: str) -> set[str]:
    try:
        return {name for _, name, _, _ in _FORMATTER.parse(template) if name}
    except ValueError:
        return set()


def _known() -> str:
    return ", ".join("{" + name + "}" for name in sorted(PLACEHOLDERS))


def _did_you_mean(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _duration_text(seconds: float) -> str:
    if seconds == 0:
        return "0s"
    whole = int(seconds)
    if whole != seconds:
        return f"{seconds:g}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts)


def _summary(rule: Rule) -> str:
    details = [f"user by {rule.user}"]
    if rule.wait_for_user:
        details.append(f"waits {_duration_text(rule.wait_for_user)} for the user")
    else:
        details.append("does not wait for the user")
    if rule.follow_report:
        details.append("follows the report")
    if rule.remove_tag:
        details.append("removes the tag")
    return "(" + ", ".join(details) + ")"
