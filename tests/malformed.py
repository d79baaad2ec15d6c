"""Hypothesis strategies for malformed configuration data: wrong types, NaN and infinities, huge and
negative numbers, nested junk, unknown keys, planted into an otherwise valid mapping."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from hypothesis import strategies as st

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**64, -(2**64), 10**400, 4, 0, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["nan", "-inf", "1e400", "1e-4", "", "lora", "sam", "auto", "organ", "qkv"]),
)
#: Any value a YAML or JSON document could hold, nested a few levels deep.
JUNK = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=4),
    max_leaves=10,
)


def _paths(tree: dict, prefix: tuple = ()) -> Iterator[tuple]:
    """Every key path into ``tree``, descending into nested dicts."""
    for key, value in tree.items():
        yield (*prefix, key)
        if isinstance(value, dict):
            yield from _paths(value, (*prefix, key))


@st.composite
def malformed(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with one to three values, at any depth, replaced by :data:`JUNK` or
    joined by a junk value under an unknown key."""
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(data))))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        parent[draw(st.sampled_from([path[-1], path[-1], "unknown_key"]))] = draw(JUNK)
    return data
