"""bot.heap: what a started bot holds stays out of the collector's full pauses."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from bot import heap


@pytest.fixture
def thawed() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the rest of the test run collects as usual


def test_settle_moves_what_lives_out_of_collections_and_collects_the_rest(thawed: None) -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self

    kept = Node()
    Node()  # a cycle nobody holds: garbage only a collection finds
    heap.settle()
    assert gc.get_freeze_count() > 0
    assert not any(isinstance(o, Node) for o in gc.get_objects())  # frozen or collected
    assert kept.me is kept
    gc.collect()  # a full collection now leaves the frozen objects alone
    assert gc.get_freeze_count() > 0
