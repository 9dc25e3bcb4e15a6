"""Metric names in PromQL expressions, and the names a /metrics page offers.

Dashboards and alert rules name metrics in free text; a renamed metric leaves
them silently empty. These helpers let a test compare the names an expression
uses with the names relay exports, whether those come from ``relay.metrics`` or
from a real scrape.

The reader below is a tokenizer, not a PromQL parser: it knows enough of the
grammar to tell a metric name from a function, an aggregation, a keyword, a
label name or a duration, and it understands Grafana's ``$variables``.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest
from prometheus_client.parser import text_string_to_metric_families

# Aggregation operators may be followed by `by (...)` or `without (...)` instead
# of an opening parenthesis, so they are recognised by name.
AGGREGATIONS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    }
)
# Keywords that take a parenthesised list of label names.
LABEL_LISTS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right"}
)
KEYWORDS = LABEL_LISTS | {"bool", "and", "or", "unless", "offset", "atan2"}
KEYWORDS |= {"inf", "nan"}  # number literals that read like names

_TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<comment>\#[^\n]*)
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<variable>\$\{[^}]*\}|\$\w+|\[\[\w+\]\])
    | (?P<number>0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])*)
    | (?P<identifier>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<operator>=~|!~|!=|==|<=|>=|[-+*/%^<>=@:,(){}\[\]])
    """,
    re.VERBOSE,
)


def _tokens(expr: str) -> list[tuple[str, str]]:
    tokens = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise ValueError(
                f"cannot read PromQL at {expr[position : position + 20]!r}"
            )
        kind = match.lastgroup or ""
        if kind not in ("space", "comment"):
            tokens.append((kind, match.group()))
        position = match.end()
    return tokens


def _check_brackets(tokens: list[tuple[str, str]]) -> None:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack = []
    for _kind, text in tokens:
        if text in ("(", "[", "{"):
            stack.append(text)
        elif text in pairs and (not stack or stack.pop() != pairs[text]):
            raise ValueError(f"unbalanced {text!r} in PromQL")
    if stack:
        raise ValueError(f"unbalanced {stack[-1]!r} in PromQL")


def _closing(tokens: list[tuple[str, str]], start: int, opening: str) -> int:
    """Index of the bracket that closes the one at ``start``."""
    closing = {"(": ")", "[": "]", "{": "}"}[opening]
    depth = 0
    for index in range(start, len(tokens)):
        text = tokens[index][1]
        if text == opening:
            depth += 1
        elif text == closing:
            depth -= 1
            if depth == 0:
                return index
    raise ValueError(f"unbalanced {opening!r} in PromQL")


def _names_in_matchers(tokens: list[tuple[str, str]]) -> set[str]:
    """Metric names given as ``__name__="..."`` inside a ``{...}`` selector."""
    names = set()
    for index in range(len(tokens) - 2):
        label, operator, value = tokens[index : index + 3]
        if label[1] == "__name__" and operator[1] == "=" and value[0] == "string":
            names.add(value[1][1:-1])
    return names


def metric_names_in_expr(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (Grafana variables allowed)."""
    tokens = _tokens(expr)
    _check_brackets(tokens)
    names: set[str] = set()
    index = 0
    while index < len(tokens):
        kind, text = tokens[index]
        following = tokens[index + 1][1] if index + 1 < len(tokens) else ""

        if text == "{":
            end = _closing(tokens, index, "{")
            names |= _names_in_matchers(tokens[index + 1 : end])
            index = end
        elif text == "[":
            # A range or subquery: durations and Grafana intervals only.
            index = _closing(tokens, index, "[")
        elif kind == "identifier":
            word = text.lower()
            if word in LABEL_LISTS and following == "(":
                index = _closing(tokens, index + 1, "(")
            elif following == "(" or word in AGGREGATIONS or word in KEYWORDS:
                pass  # a function, an aggregation or a keyword
            else:
                names.add(text)
        index += 1
    return names


def exported_metric_names(exposition: str) -> set[str]:
    """Series names a Prometheus text exposition offers, as PromQL spells them.

    A family declared with ``# TYPE`` counts even without samples (a labelled
    metric nothing has touched yet). ``_created`` series are left out (the text
    format declares them as gauges of their own): they are absent in
    multiprocess mode, so nothing should depend on them.
    """
    names = set()
    for family in text_string_to_metric_families(exposition):
        if family.name.endswith("_created"):
            continue
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type in ("histogram", "gaugehistogram"):
            names |= {f"{family.name}_{end}" for end in ("bucket", "sum", "count")}
        elif family.type == "summary":
            names |= {family.name, f"{family.name}_sum", f"{family.name}_count"}
        elif family.type == "info":
            names.add(f"{family.name}_info")
        else:
            names.add(family.name)
        samples = {sample.name for sample in family.samples}
        names |= {name for name in samples if not name.endswith("_created")}
    return names


def promtool() -> str:
    """Path of promtool; skips the test where it is missing, fails in CI."""
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI: run .ci/install-tools first")
        pytest.skip("promtool is not installed (bash .ci/install-tools installs it)")
    return path
