"""The PromQL name reader that the dashboard and alert checks rely on."""

from __future__ import annotations

import pytest
from promql import exported_metric_names, metric_names_in_expr


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            "sum by (provider, outcome) (rate(relay_webhooks_total[$__rate_interval]))",
            {"relay_webhooks_total"},
        ),
        (
            "histogram_quantile(0.95, sum by (le) (rate(relay_x_bucket[5m])))",
            {"relay_x_bucket"},
        ),
        ("sum(rate(relay_a_total[5m])) by (le, provider)", {"relay_a_total"}),
        (
            'max(relay_jobs{state="dead"}) > max(relay_jobs{state="dead"} offset 15m)',
            {"relay_jobs"},
        ),
        ("sum(a) / ignoring(x) group_left(y) b", {"a", "b"}),
        ("a * on(instance) group_left b", {"a", "b"}),
        ("x and on() y unless z or w", {"x", "y", "z", "w"}),
        ('{__name__="relay_jobs", state="dead"}', {"relay_jobs"}),
        ('label_replace(up, "dst", "relay_not_a_metric", "src", "(.*)")', {"up"}),
        ("count by (version) (relay_build_info) > bool 0", {"relay_build_info"}),
        ("rate(x[5m:1m])", {"x"}),
        ("max_over_time(deriv(y[${interval}])[1h:])", {"y"}),
        ("sum(increase(z_total[$__range]))", {"z_total"}),
        ("absent_over_time(q_total[6h]) or vector(0)", {"q_total"}),
        ("topk(3, sum without (pod) (m))", {"m"}),
        ("a # the rest_of_this_line is a comment\n + b", {"a", "b"}),
        ("SUM BY (le) (n)", {"n"}),
        ("1 + 2e3 * 0x1f - .5", set()),
    ],
)
def test_metric_names_in_expr(expr: str, names: set[str]) -> None:
    assert metric_names_in_expr(expr) == names


@pytest.mark.parametrize("expr", ['rate(x{a="b)', "sum(rate(x[5m])", "x ~ y"])
def test_unreadable_expressions_raise(expr: str) -> None:
    with pytest.raises(ValueError):
        metric_names_in_expr(expr)


EXPOSITION = """\
# HELP relay_things_total Things.
# TYPE relay_things_total counter
relay_things_total{kind="a"} 3.0
# HELP relay_things_created Things.
# TYPE relay_things_created gauge
relay_things_created{kind="a"} 1.7e9
# HELP relay_untouched_total Declared, no samples yet.
# TYPE relay_untouched_total counter
# HELP relay_wait_seconds Waits.
# TYPE relay_wait_seconds histogram
# HELP relay_depth Depth.
# TYPE relay_depth gauge
relay_depth 4.0
"""


def test_exported_metric_names_spells_series_as_promql_does() -> None:
    assert exported_metric_names(EXPOSITION) == {
        "relay_things_total",
        "relay_untouched_total",
        "relay_wait_seconds_bucket",
        "relay_wait_seconds_sum",
        "relay_wait_seconds_count",
        "relay_depth",
    }
