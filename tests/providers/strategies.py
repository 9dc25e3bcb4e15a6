"""Hypothesis strategies for payload parsers: any JSON, and near-misses of examples."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hypothesis import strategies as st


def json_values(words: Iterable[str], keys: Iterable[str]) -> st.SearchStrategy[Any]:
    """Any JSON value, favouring the given strings as values and object keys."""
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.integers(min_value=-(10**30), max_value=10**30)
        | st.floats()
        | st.text(max_size=20)
        | st.sampled_from(list(words)),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(
                st.sampled_from(list(keys)) | st.text(max_size=8),
                children,
                max_size=5,
            )
        ),
        max_leaves=25,
    )


@st.composite
def mutations(draw: st.DrawFn, value: Any, values: st.SearchStrategy[Any]) -> Any:
    """``value`` with one node somewhere inside replaced, deleted or descended."""
    if isinstance(value, dict) and value and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(value)))
        changed = dict(value)
        how = draw(st.sampled_from(["delete", "replace", "descend"]))
        if how == "delete":
            del changed[key]
        else:
            inner = values if how == "replace" else mutations(value[key], values)
            changed[key] = draw(inner)
        return changed
    if isinstance(value, list) and value and draw(st.booleans()):
        index = draw(st.integers(0, len(value) - 1))
        changed_list = list(value)
        changed_list[index] = draw(mutations(value[index], values))
        return changed_list
    return draw(values)
