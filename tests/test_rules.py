"""The rules file: loading, every kind of problem, matching and templates."""

from __future__ import annotations

import json
import string
import subprocess
import sys
import textwrap
import timeit
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.errors import RulesError
from relay.rules import (
    ACTIONS,
    DEFAULT_NOTE,
    DEFAULT_OFFLINE_NOTE,
    DEFAULT_REPORT_NOTE,
    PLACEHOLDERS,
    Rule,
    Rules,
    describe,
    load_rules,
    parse_rules,
    render,
    template_problems,
)

REPO = Path(__file__).resolve().parent.parent


def rules_text(body: str) -> str:
    """A rules file with ``body`` (indented YAML list items) under ``rules:``."""
    return "version: 1\nrules:\n" + textwrap.dedent(body)


def problems_of(text: str, source: str = "rules.yaml") -> list[str]:
    with pytest.raises(RulesError) as caught:
        parse_rules(text, source)
    assert caught.value.path == source
    return caught.value.problems


MINIMAL = rules_text(
    """\
    - name: shot
      when:
        tag: bugpilot_screenshot
      action: upload-screenshot
    """
)


# Keys and defaults -------------------------------------------------------------


def test_a_minimal_rule_takes_every_default() -> None:
    rules = parse_rules(MINIMAL, "rules.yaml")

    assert rules.source == "rules.yaml"
    assert rules.rules == (
        Rule(
            name="shot",
            tag="bugpilot_screenshot",
            provider=None,
            action="upload-screenshot",
            user="email",
            description=None,
            note=DEFAULT_NOTE,
            offline_note=DEFAULT_OFFLINE_NOTE,
            report_note=DEFAULT_REPORT_NOTE,
            wait_for_user=0.0,
            remove_tag=False,
            follow_report=False,
            line=3,
        ),
    )


def test_default_templates_are_valid_and_say_what_happened() -> None:
    for template in (DEFAULT_NOTE, DEFAULT_OFFLINE_NOTE, DEFAULT_REPORT_NOTE):
        assert template_problems(template) == []

    assert "{session_info_url}" in DEFAULT_NOTE
    assert "{report_url}" in DEFAULT_REPORT_NOTE
    assert "not online" in DEFAULT_OFFLINE_NOTE


def test_every_key_is_read() -> None:
    text = rules_text(
        """\
        - name: first
          when: {tag: one, provider: zendesk}
          action: upload-screenshot
        - name: session.by-id_2
          when:
            tag: Bugpilot Session
            provider: intercom
          action: upload-session
          user: external_id
          description: "Ticket {ticket_id}: {subject}"
          note: "Session {{raw}} {session_info_url}"
          offline_note: "Offline: {error}"
          report_note: "Report: {report_url}"
          wait_for_user: 10m
          remove_tag: true
          follow_report: true
        """
    )

    first, second = parse_rules(text).rules

    assert (first.provider, first.line) == ("zendesk", 3)
    assert second == Rule(
        name="session.by-id_2",
        tag="Bugpilot Session",
        provider="intercom",
        action="upload-session",
        user="external_id",
        description="Ticket {ticket_id}: {subject}",
        note="Session {{raw}} {session_info_url}",
        offline_note="Offline: {error}",
        report_note="Report: {report_url}",
        wait_for_user=600.0,
        remove_tag=True,
        follow_report=True,
        line=6,
    )


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ("0", 0.0),
        ("45", 45.0),
        ("1.5", 1.5),
        ("30s", 30.0),
        ("30m", 1800.0),
        ("2h", 7200.0),
        ('"90"', 90.0),
        ("1d", 86400.0),
    ],
)
def test_wait_for_user_reads_durations(written: str, seconds: float) -> None:
    text = MINIMAL + f"  wait_for_user: {written}\n"

    assert parse_rules(text).rules[0].wait_for_user == seconds


@pytest.mark.parametrize("action", ACTIONS)
def test_every_action_is_accepted(action: str) -> None:
    text = MINIMAL.replace("upload-screenshot", action)

    assert parse_rules(text).rules[0].action == action


def test_provider_may_be_null_for_both() -> None:
    text = MINIMAL.replace("tag: bugpilot_screenshot", "tag: x\n    provider: null")

    assert parse_rules(text).rules[0].provider is None


def test_description_may_be_null() -> None:
    text = MINIMAL + "  description: null\n"

    assert parse_rules(text).rules[0].description is None


# Problems -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "  colour: blue\n",
            "rules.yaml:7: rules[0].colour: unknown key; allowed: name, when, "
            "action, user, description, note, offline_note, report_note, "
            "wait_for_user, remove_tag, follow_report",
        ),
        (
            "  remove_tags: true\n",
            "rules.yaml:7: rules[0].remove_tags: unknown key (did you mean "
            "'remove_tag'?)",
        ),
        ("  user: phone\n", "rules.yaml:7: rules[0].user: unknown user 'phone'"),
        ("  user: 12\n", "rules.yaml:7: rules[0].user: must be a string"),
        ("  note: ''\n", "rules.yaml:7: rules[0].note: must not be empty"),
        ("  note: null\n", "rules.yaml:7: rules[0].note: must not be empty"),
        ("  note: [a, b]\n", "rules.yaml:7: rules[0].note: must be a string"),
        ("  offline_note: '  '\n", "rules.yaml:7: rules[0].offline_note: must not"),
        ("  report_note: '{url}'\n", "rules.yaml:7: rules[0].report_note: {url}: "),
        ("  remove_tag: 'yes'\n", "rules.yaml:7: rules[0].remove_tag: must be true"),
        ("  follow_report: 1\n", "rules.yaml:7: rules[0].follow_report: must be true"),
        ("  wait_for_user: 10x\n", "rules.yaml:7: rules[0].wait_for_user: must be a"),
        ("  wait_for_user: -5\n", "rules.yaml:7: rules[0].wait_for_user: must be a"),
        ("  wait_for_user: .inf\n", "rules.yaml:7: rules[0].wait_for_user: must be"),
        ("  wait_for_user: true\n", "rules.yaml:7: rules[0].wait_for_user: must be"),
        ("  wait_for_user: [1]\n", "rules.yaml:7: rules[0].wait_for_user: must be"),
        (
            "  description: '{session_info_url} {error}'\n",
            "rules.yaml:7: rules[0].description: {session_info_url}, {error} not "
            "known yet when the description is sent to Bugpilot",
        ),
        (
            "  note: 'see {sesion_info_url}'\n",
            "rules.yaml:7: rules[0].note: {sesion_info_url}: unknown placeholder "
            "(did you mean 'session_info_url'?)",
        ),
        ("  note: 'a {'\n", "rules.yaml:7: rules[0].note: unbalanced braces"),
        (
            "  note: '{ticket_id.__class__}'\n",
            "rules.yaml:7: rules[0].note: {ticket_id.__class__}: attribute access",
        ),
        ("  note: '{ticket_id[0]}'\n", "rules.yaml:7: rules[0].note: {ticket_id[0]}"),
        ("  note: '{0}'\n", "rules.yaml:7: rules[0].note: {0}: positional fields"),
        ("  note: 'x{}'\n", "rules.yaml:7: rules[0].note: {}: positional fields"),
        ("  note: '{tag!r}'\n", "rules.yaml:7: rules[0].note: {tag!r}: conversions"),
        ("  note: '{tag:>9}'\n", "rules.yaml:7: rules[0].note: {tag:>9}: format"),
        ("  note: a\n  note: b\n", "rules.yaml:8: rules[0].note: written twice"),
    ],
)
def test_a_bad_rule_key_is_reported_on_its_line(extra: str, expected: str) -> None:
    problems = problems_of(MINIMAL + extra)

    assert len(problems) == 1, problems
    assert problems[0].startswith(expected)


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (
            "    tag: t\n    provider: freshdesk\n",
            "rules.yaml:6: rules[0].when.provider: unknown provider 'freshdesk'",
        ),
        (
            "    tag: t\n    tags: [a]\n",
            "rules.yaml:6: rules[0].when.tags: unknown key (did you mean 'tag'?); "
            "allowed: tag, provider",
        ),
        ("    provider: zendesk\n", "rules.yaml:4: rules[0].when.tag: is required"),
        ("    tag: 42\n", "rules.yaml:5: rules[0].when.tag: must be a string"),
        ("    tag: ''\n", "rules.yaml:5: rules[0].when.tag: must not be empty"),
        ("    tag: ' x'\n", "rules.yaml:5: rules[0].when.tag: must not start or"),
        (
            "    tag: Bugpilot\n    provider: zendesk\n",
            "rules.yaml:5: rules[0].when.tag: Zendesk tags are lower case",
        ),
        (
            "    tag: a b\n    provider: zendesk\n",
            "rules.yaml:5: rules[0].when.tag: Zendesk tags are lower case",
        ),
    ],
)
def test_a_bad_when_is_reported_on_its_line(when: str, expected: str) -> None:
    text = rules_text("- name: r\n  when:\n" + when + "  action: upload-session\n")

    problems = problems_of(text)

    assert len(problems) == 1, problems
    assert problems[0].startswith(expected)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            "- when: {tag: t}\n  action: upload-session\n",
            "rules.yaml:3: rules[0].name: is required",
        ),
        ("- name: r\n  action: upload-session\n", "rules.yaml:3: rules[0].when: is"),
        ("- name: r\n  when: {tag: t}\n", "rules.yaml:3: rules[0].action: is required"),
        (
            "- name: r\n  when: [t]\n  action: upload-session\n",
            "rules.yaml:4: rules[0].when: must be a mapping",
        ),
        (
            "- name: r\n  when: null\n  action: upload-session\n",
            "rules.yaml:4: rules[0].when: must be a mapping",
        ),
        (
            "- name: r\n  when: {tag: t}\n  action: upload-screenshots\n",
            "rules.yaml:5: rules[0].action: unknown action 'upload-screenshots' "
            "(did you mean 'upload-screenshot'?); use one of upload-screenshot, "
            "upload-session, show-recording-ui",
        ),
        (
            "- name: 7\n  when: {tag: t}\n  action: upload-session\n",
            "rules.yaml:3: rules[0].name: must be a string; put it in quotes",
        ),
        (
            "- name: two words\n  when: {tag: t}\n  action: upload-session\n",
            "rules.yaml:3: rules[0].name: must be 1 to 64 letters",
        ),
        (
            f"- name: {'n' * 65}\n  when: {{tag: t}}\n  action: upload-session\n",
            "rules.yaml:3: rules[0].name: must be 1 to 64 letters",
        ),
        ("- just a string\n", "rules.yaml:3: rules[0]: must be a mapping"),
        ("- null\n", "rules.yaml:3: rules[0]: must be a mapping"),
    ],
)
def test_a_missing_or_malformed_rule_is_reported(rule: str, expected: str) -> None:
    problems = problems_of(rules_text(rule))

    assert len(problems) == 1, problems
    assert problems[0].startswith(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "rules.yaml:1: the file is empty"),
        ("\n   \n", "rules.yaml:1: the file is empty"),
        ("# only a comment\n", "rules.yaml:1: the file is empty"),
        ("---\n", "rules.yaml:1: the file is empty"),
        ("- a\n- b\n", "rules.yaml:1: the file must be a mapping"),
        ("just words\n", "rules.yaml:1: the file must be a mapping"),
        ("rules: []\n", "rules.yaml:1: version: is required"),
        ("version: 1\n", "rules.yaml:1: rules: is required"),
        ("version: 1\nrules: []\n", "rules.yaml:2: rules: must list at least one"),
        ("version: 1\nrules:\n", "rules.yaml:2: rules: must list at least one"),
        ("version: 1\nrules: {a: 1}\n", "rules.yaml:2: rules: must be a list of rules"),
        (
            "version: 1\nrules: []\nstrict: false\n",
            "rules.yaml:2: rules: must list at least one rule",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    when: {tag: [\n",
            "rules.yaml:5: invalid YAML: ",
        ),
        (
            "version: 1\nrules:\n  - name: a\n   action: x\n",
            "rules.yaml:4: invalid YAML: ",
        ),
        ("version: 1\nrules: [\x07]\n", "rules.yaml:2: invalid YAML: unacceptable"),
        ("a: 1\n---\nb: 2\n", "rules.yaml:2: invalid YAML: "),
        ("version: 1\nversion: 1\n", "rules.yaml:2: version: written twice"),
    ],
)
def test_file_level_problems(text: str, expected: str) -> None:
    problems = problems_of(text)

    assert any(problem.startswith(expected) for problem in problems), problems


@pytest.mark.parametrize("version", ["2", "0", "'1'", "1.0", "true", "null", "[1]"])
def test_only_version_1_is_read(version: str) -> None:
    problems = problems_of(MINIMAL.replace("version: 1", f"version: {version}"))

    assert len(problems) == 1
    assert problems[0].startswith(
        "rules.yaml:1: version: must be 1, the only version this relay reads; got "
    )


def test_an_unknown_top_level_key_is_named() -> None:
    problems = problems_of("versions: 1\n" + MINIMAL.replace("version: 1\n", ""))

    assert problems == [
        "rules.yaml:1: version: is required",
        "rules.yaml:1: versions: unknown key (did you mean 'version'?); "
        "allowed: version, rules",
    ]


def test_duplicate_rule_names_point_at_both() -> None:
    text = rules_text(
        """\
        - name: same
          when: {tag: a}
          action: upload-session
        - name: other
          when: {tag: b}
          action: upload-session
        - name: same
          when: {tag: c}
          action: upload-session
        """
    )

    assert problems_of(text) == [
        "rules.yaml:9: rules[2].name: duplicate rule name 'same'; "
        "rules[0] on line 3 has it"
    ]


def test_every_problem_is_reported_in_line_order() -> None:
    text = rules_text(
        """\
        - name: a
          when: {tag: T, provider: zendesk, extra: 1}
          action: upload-screenshots
          note: "{ticket_id.__class__} {foo}"
          wait_for_user: soon
        - 5
        - name: a
          action: show-recording-ui
          remove_tag: maybe
        """
    )

    problems = problems_of(text)

    assert [problem.split(": ")[0:2] for problem in problems] == [
        ["rules.yaml:4", "rules[0].when.extra"],
        ["rules.yaml:4", "rules[0].when.tag"],
        ["rules.yaml:5", "rules[0].action"],
        ["rules.yaml:6", "rules[0].note"],
        ["rules.yaml:6", "rules[0].note"],
        ["rules.yaml:7", "rules[0].wait_for_user"],
        ["rules.yaml:8", "rules[1]"],
        ["rules.yaml:9", "rules[2].name"],
        ["rules.yaml:9", "rules[2].when"],
        ["rules.yaml:11", "rules[2].remove_tag"],
    ]
    assert "rules.yaml" in str(RulesError("rules.yaml", problems))


def test_a_yaml_error_names_its_own_line_and_no_other_problem() -> None:
    text = MINIMAL + "  note: 'unterminated\n"

    problems = problems_of(text)

    assert len(problems) == 1
    assert problems[0].startswith("rules.yaml:8: invalid YAML: ")


def test_load_rules_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(MINIMAL, encoding="utf-8")

    rules = load_rules(path)

    assert rules.source == str(path)
    assert [rule.name for rule in rules.rules] == ["shot"]


def test_load_rules_names_the_file_in_each_problem(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(MINIMAL + "  user: phone\n", encoding="utf-8")

    with pytest.raises(RulesError) as caught:
        load_rules(str(path))

    assert caught.value.problems[0].startswith(f"{path}:7: rules[0].user: ")


def test_a_missing_file_is_a_rules_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"

    with pytest.raises(RulesError) as caught:
        load_rules(path)

    assert caught.value.reason == "invalid_rules"
    assert caught.value.problems == [
        f"{path}: cannot read the rules file: No such file or directory"
    ]


def test_a_directory_is_a_rules_error(tmp_path: Path) -> None:
    with pytest.raises(RulesError) as caught:
        load_rules(tmp_path)

    assert caught.value.problems[0].startswith(f"{tmp_path}: cannot read")


def test_a_file_that_is_not_utf8_is_a_rules_error(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_bytes(b"version: 1\nrules: \xff\xfe\n")

    with pytest.raises(RulesError) as caught:
        load_rules(path)

    assert caught.value.problems[0].startswith(f"{path}: not UTF-8 text")


# Matching -----------------------------------------------------------------------

MIXED = rules_text(
    """\
    - name: both-shot
      when: {tag: shot}
      action: upload-screenshot
    - name: zendesk-session
      when: {tag: session, provider: zendesk}
      action: upload-session
    - name: intercom-session
      when: {tag: session, provider: intercom}
      action: upload-session
    - name: both-shot-recording
      when: {tag: shot}
      action: show-recording-ui
    - name: intercom-caps
      when: {tag: Record Me, provider: intercom}
      action: show-recording-ui
    """
)


def names(rules: list[Rule]) -> list[str]:
    return [rule.name for rule in rules]


def test_match_returns_firing_rules_in_file_order() -> None:
    rules = parse_rules(MIXED)

    assert names(rules.match("zendesk", "shot")) == ["both-shot", "both-shot-recording"]
    assert names(rules.match("intercom", "shot")) == [
        "both-shot",
        "both-shot-recording",
    ]
    assert names(rules.match("zendesk", "session")) == ["zendesk-session"]
    assert names(rules.match("intercom", "session")) == ["intercom-session"]
    assert names(rules.match("intercom", "Record Me")) == ["intercom-caps"]


def test_match_is_exact() -> None:
    rules = parse_rules(MIXED)

    assert rules.match("intercom", "record me") == []
    assert rules.match("zendesk", "Record Me") == []
    assert rules.match("zendesk", "other") == []
    assert rules.match("freshdesk", "shot") == []


def test_match_returns_a_fresh_list() -> None:
    rules = parse_rules(MIXED)

    rules.match("zendesk", "shot").clear()

    assert len(rules.match("zendesk", "shot")) == 2


def test_match_tags_pairs_each_rule_with_its_tag_once() -> None:
    rules = parse_rules(MIXED)

    fired = rules.match_tags("zendesk", ["vip", "session", "shot", "session", "shot"])

    assert [(tag, rule.name) for tag, rule in fired] == [
        ("session", "zendesk-session"),
        ("shot", "both-shot"),
        ("shot", "both-shot-recording"),
    ]
    assert rules.match_tags("intercom", []) == []
    assert rules.match_tags("intercom", iter(["nothing"])) == []


def test_explain_says_why_each_rule_fires_or_not() -> None:
    lines = parse_rules(MIXED, "rules.yaml").explain("intercom", "session")

    assert lines == [
        "1 of 5 rules fire for tag 'session' on intercom (rules.yaml)",
        "skips both-shot (line 3): watches tag 'shot', not 'session'",
        "skips zendesk-session (line 6): only for zendesk, not intercom",
        "fires intercom-session (line 9): upload-session "
        "(user by email, does not wait for the user)",
        "skips both-shot-recording (line 12): watches tag 'shot', not 'session'",
        "skips intercom-caps (line 15): watches tag 'Record Me', not 'session'",
    ]


def test_explain_points_out_a_case_mismatch_and_an_unknown_provider() -> None:
    rules = parse_rules(MIXED)

    case = rules.explain("intercom", "record me")
    unknown = rules.explain("helpscout", "shot")

    assert case[-1].endswith("(tags must match exactly, including case)")
    assert unknown[1] == "unknown provider 'helpscout': relay knows zendesk, intercom"
    assert (
        unknown[2]
        == "skips both-shot (line 3): only for zendesk and intercom, not helpscout"
    )


def many_rules(count: int) -> Rules:
    return Rules(
        tuple(
            Rule(name=f"rule-{i}", tag=f"tag-{i}", action="upload-session", line=i)
            for i in range(count)
        ),
        "generated",
    )


class _NoScan(tuple[Rule, ...]):
    def __iter__(self) -> Any:
        raise AssertionError("matching walked the whole rules list")


def test_match_uses_the_index_and_never_walks_the_rules() -> None:
    rules = many_rules(10_000)
    object.__setattr__(rules, "rules", _NoScan(rules.rules))

    assert names(rules.match("zendesk", "tag-9999")) == ["rule-9999"]
    assert names([rule for _, rule in rules.match_tags("intercom", ["tag-5"])]) == [
        "rule-5"
    ]


def test_matching_10000_rules_costs_about_as_much_as_10() -> None:
    small, large = many_rules(10), many_rules(10_000)

    def cost(rules: Rules) -> float:
        return min(
            timeit.repeat(
                lambda: rules.match("zendesk", "tag-7"), number=2000, repeat=5
            )
        )

    assert cost(large) < 5 * cost(small) + 0.001


def test_parsing_10000_rules_indexes_them_all() -> None:
    body = "".join(
        f"  - name: r{i}\n    when: {{tag: t{i}}}\n    action: upload-session\n"
        for i in range(10_000)
    )

    rules = parse_rules("version: 1\nrules:\n" + body)

    assert len(rules) == 10_000
    assert rules.rules[9_999].line == 3 + 3 * 9_999
    assert names(rules.match("intercom", "t9999")) == ["r9999"]


def test_rules_accepts_a_list_and_finds_rules_by_name() -> None:
    rule = Rule(name="a", tag="t", action="upload-session")

    rules = Rules([rule])  # type: ignore[arg-type]

    assert rules.rules == (rule,)
    assert rules.get("a") is rule
    assert rules.get("b") is None


# Snapshots ---------------------------------------------------------------------


def test_to_dict_and_from_dict_round_trip_through_json() -> None:
    for rule in (
        parse_rules(MIXED).rules + load_rules(REPO / "rules.example.yaml").rules
    ):
        snapshot = json.loads(json.dumps(rule.to_dict()))

        assert Rule.from_dict(snapshot) == rule


def test_to_dict_holds_every_field() -> None:
    rule = Rule(
        name="r",
        tag="t",
        provider="zendesk",
        action="show-recording-ui",
        user="external_id",
        description="d",
        note="n",
        offline_note="o",
        report_note="p",
        wait_for_user=90.0,
        remove_tag=True,
        follow_report=True,
        line=12,
    )

    assert rule.to_dict() == {
        "name": "r",
        "tag": "t",
        "provider": "zendesk",
        "action": "show-recording-ui",
        "user": "external_id",
        "description": "d",
        "note": "n",
        "offline_note": "o",
        "report_note": "p",
        "wait_for_user": 90.0,
        "remove_tag": True,
        "follow_report": True,
        "line": 12,
    }


def test_from_dict_fills_keys_an_older_snapshot_lacks() -> None:
    rule = Rule.from_dict({"name": "r", "tag": "t", "action": "upload-session"})

    assert rule == Rule(name="r", tag="t", action="upload-session")


# Templates ----------------------------------------------------------------------


def test_render_fills_placeholders() -> None:
    values = {"ticket_id": 42, "subject": "Login fails", "provider": "zendesk"}

    text = render("{provider} #{ticket_id}: {subject} {{literal}}", values)

    assert text == "zendesk #42: Login fails {literal}"


def test_render_leaves_missing_and_none_values_empty() -> None:
    assert render("[{report_url}] [{error}]", {"error": None}) == "[] []"


def test_render_does_not_expand_placeholders_inside_values() -> None:
    values = {"subject": "{ticket_id} {{x}} {0.__class__}", "ticket_id": "7"}

    assert render("{subject}", values) == "{ticket_id} {{x}} {0.__class__}"


class Trap:
    """A value that leaks LEAK through anything but plain ``str()``."""

    secret = "LEAK"

    def __str__(self) -> str:
        return "v"

    def __repr__(self) -> str:
        return "LEAK"

    def __format__(self, spec: str) -> str:
        return "LEAK"

    def __getitem__(self, key: object) -> str:
        return "LEAK"

    def __getattr__(self, name: str) -> str:
        return "LEAK"


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")


def test_render_never_evaluates_what_the_file_check_refuses() -> None:
    values = {name: Trap() for name in PLACEHOLDERS}
    template = "{tag.secret}{tag[0]}{tag!r}{tag:>5}{0}{}{tag}"

    assert render(template, values) == "{tag.secret}{tag[0]}{tag!r}{tag:>5}{0}{}v"


def test_render_survives_values_that_cannot_print() -> None:
    assert render("a{subject}b", {"subject": Unprintable()}) == "ab"


def test_render_shows_an_unbalanced_template_as_written() -> None:
    assert render("a } {tag", {"tag": "x"}) == "a } {tag"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{ticket_id.__class__}", ["{ticket_id.__class__}: attribute access is not"]),
        ("{ticket_id[0]}", ["{ticket_id[0]}: item access is not allowed"]),
        ("{[0]}", ["{[0]}: item access is not allowed"]),
        ("{}", ["{}: positional fields are not allowed"]),
        ("{0}", ["{0}: positional fields are not allowed"]),
        ("{tag!s}", ["{tag!s}: conversions such as !s are not allowed"]),
        ("{tag:>10}", ["{tag:>10}: format specs such as :>10 are not allowed"]),
        (
            "{tag!r:{subject}}",
            ["{tag!r:{subject}}: conversions", "{tag!r:{subject}}: format specs"],
        ),
        ("{ tag }", ["{ tag }: unknown placeholder"]),
        ("{TAG}", ["{TAG}: unknown placeholder"]),
        ("{", ["unbalanced braces"]),
        ("}", ["unbalanced braces"]),
        ("{tag!}", ["unbalanced braces"]),
        ("{foo} {foo}", ["{foo}: unknown placeholder"]),
    ],
)
def test_template_problems_name_each_refused_field(
    template: str, expected: list[str]
) -> None:
    problems = template_problems(template)

    assert len(problems) == len(expected), problems
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start)


@pytest.mark.parametrize(
    "template",
    [
        "",
        "plain text",
        "{{not a field}}",
        "{tag}{rule}",
        "}}{{",
        *map("{{{}}}".format, PLACEHOLDERS),
    ],
)
def test_template_problems_accept_plain_placeholders(template: str) -> None:
    assert template_problems(template) == []


# Property tests --------------------------------------------------------------------

TEMPLATE_CHARS = string.ascii_lowercase + string.digits + "_{}[]().!:<>= '\"\\"
placeholder_names = st.sampled_from(sorted(PLACEHOLDERS))
# A replacement field with every part Python's str.format would act on.
format_field = st.builds(
    lambda name, access, conversion, spec: (
        "{" + name + access + conversion + spec + "}"
    ),
    st.one_of(placeholder_names, st.text(alphabet=TEMPLATE_CHARS, max_size=6)),
    st.one_of(
        st.sampled_from(["", ".secret", ".__class__", "[0]", "[key]", ".a.b"]),
        st.text(alphabet=".[]_abc0", max_size=6),
    ),
    st.sampled_from(["", "!r", "!s", "!a", "!"]),
    st.sampled_from(["", ":", ":>9", ":x", ":{tag}", ":{tag.secret}"]),
)
template_text = st.lists(
    st.one_of(
        st.text(alphabet=TEMPLATE_CHARS, max_size=12),
        format_field,
        st.sampled_from(["{", "}", "{{", "}}", "{}"]),
    ),
    max_size=8,
).map("".join)
any_value = st.one_of(
    st.none(),
    st.text(),
    st.integers(),
    st.floats(allow_nan=True),
    st.builds(Trap),
    st.builds(Unprintable),
    st.binary(),
)


@given(template=template_text)
def test_render_never_reaches_attributes_items_or_formatting(template: str) -> None:
    values = {name: Trap() for name in PLACEHOLDERS}

    text = render(template, values)

    # LEAK is upper case and Trap's own name never reaches the output except
    # through repr, format specs, attribute or item access.
    assert "LEAK" not in text
    assert "Trap" not in text
    assert isinstance(text, str)


@given(template=st.text(), values=st.dictionaries(st.text(), any_value))
def test_render_never_raises(template: str, values: dict[str, object]) -> None:
    assert isinstance(render(template, values), str)


@given(
    template=template_text,
    values=st.fixed_dictionaries({}, optional={n: any_value for n in PLACEHOLDERS}),
)
def test_render_never_raises_on_placeholder_values(
    template: str, values: dict[str, object]
) -> None:
    assert isinstance(render(template, values), str)


@given(
    parts=st.lists(
        st.one_of(
            st.text(alphabet=st.characters(exclude_characters="{}")).map(
                lambda text: ("text", text)
            ),
            placeholder_names.map(lambda name: ("field", name)),
        ),
        max_size=10,
    ),
    values=st.dictionaries(placeholder_names, st.text()),
)
def test_render_of_a_valid_template_is_plain_substitution(
    parts: list[tuple[str, str]], values: dict[str, str]
) -> None:
    template = "".join(t if kind == "text" else "{" + t + "}" for kind, t in parts)
    expected = "".join(t if kind == "text" else values.get(t, "") for kind, t in parts)

    assert template_problems(template) == []
    assert render(template, values) == expected


@given(
    name=st.one_of(
        placeholder_names,
        st.text(alphabet=st.characters(exclude_characters="{}!:"), max_size=20),
    ),
    access=st.sampled_from(["", ".secret", "[0]", ".__class__", "[]"]),
    conversion=st.sampled_from(["", "!r", "!s", "!a"]),
    spec=st.sampled_from(["", ":x", ":>10", ":{tag}"]),
)
def test_template_problems_flag_every_field_but_a_plain_placeholder(
    name: str, access: str, conversion: str, spec: str
) -> None:
    template = "a {" + name + access + conversion + spec + "} b"

    problems = template_problems(template)

    if name in PLACEHOLDERS and not (access or conversion or spec):
        assert problems == []
    else:
        assert problems


@given(template=template_text)
def test_a_template_without_problems_has_only_plain_placeholders(template: str) -> None:
    if template_problems(template):
        return

    for _, name, spec, conversion in string.Formatter().parse(template):
        assert name is None or name in PLACEHOLDERS
        assert not spec
        assert conversion is None


# The sample file and the listing ---------------------------------------------------


def test_the_example_file_parses_and_covers_every_action() -> None:
    rules = load_rules(REPO / "rules.example.yaml")

    assert {rule.action for rule in rules.rules} == set(ACTIONS)
    screenshot = rules.match("zendesk", "bugpilot_screenshot")
    assert screenshot == rules.match("intercom", "bugpilot_screenshot")
    assert [(r.action, r.user, r.remove_tag) for r in screenshot] == [
        ("upload-screenshot", "email", True)
    ]
    (session,) = rules.match("zendesk", "bugpilot_session")
    assert (session.action, session.wait_for_user) == ("upload-session", 600.0)
    (record,) = rules.match("intercom", "bugpilot_record")
    assert (record.action, record.follow_report) == ("show-recording-ui", True)


def test_describe_lists_every_rule() -> None:
    rules = parse_rules(
        MIXED.replace(
            "action: upload-session\n",
            "action: upload-session\n  wait_for_user: 90m\n  remove_tag: true\n",
            1,
        ),
        "rules.yaml",
    )

    listing = describe(rules).splitlines()

    assert listing[0] == "rules.yaml: 5 rules, all valid"
    assert listing[2] == (
        "  zendesk-session (line 6): tag 'session' on zendesk -> upload-session "
        "(user by email, waits 1h30m for the user, removes the tag)"
    )
    assert len(listing) == 6


def test_describe_counts_one_rule_in_the_singular() -> None:
    assert describe(parse_rules(MINIMAL, "f")).startswith("f: 1 rule, all valid\n")


def test_the_rules_module_imports_no_flask() -> None:
    code = "import sys, relay.rules; print('flask' in sys.modules)"

    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )

    assert result.stdout.strip() == "False"
