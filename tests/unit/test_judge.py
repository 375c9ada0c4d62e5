"""The judge's repetition measure on hand-worked continuations."""

from __future__ import annotations

import pytest

from kdistill.experiment.judge import Judgement, distinct_bigrams


@pytest.mark.parametrize(
    ("continuations", "share"),
    [
        ([[7, 7, 7, 7]], 1 / 3),  # " the the the the": 3 bigrams, one of them distinct
        ([[1, 2, 3], [4, 4]], 1.0),  # (2 + 1) distinct of (2 + 1)
        ([[1, 2, 1, 2, 1], [5]], 2 / 4),  # (1,2) (2,1) repeat; [5] has no bigram
        ([[1, 2], [1, 2]], 1.0),  # repeats across continuations do not count, within do
    ],
)
def test_distinct_bigrams_pools_each_continuations_own_repeats(continuations, share):
    assert distinct_bigrams(continuations) == pytest.approx(share)


def test_no_bigram_gives_none_not_a_number():
    assert distinct_bigrams([[3], []]) is None
    assert Judgement(1.0, 2, 1, None).as_dict()["judged_distinct_bigrams"] is None
