"""Random numbers and dropout masks at an offset: a block of rows gets the numbers it has in the whole array."""

from __future__ import annotations

import numpy as np
import pytest

import xpcnn.functional as F
from xpcnn._random import uniform


def test_uniform_at_an_offset_is_that_part_of_the_whole(xp):
    whole = uniform(xp.namespace, (6, 5), seed=3, stream=2, device=xp.device)
    part = uniform(xp.namespace, (2, 5), seed=3, stream=2, offset=15, device=xp.device)
    assert np.array_equal(xp.to_numpy(whole)[3:5], xp.to_numpy(part))


def test_dropout_mask_of_rows_is_the_whole_batch_mask_there():
    x = np.random.default_rng(0).standard_normal((7, 3, 4))
    whole, _ = F.dropout_forward(x, 0.4, seed=5, stream=1)
    part, _ = F.dropout_forward(x[2:5], 0.4, seed=5, stream=1, offset=2 * 12)
    assert np.array_equal(whole[2:5], part)
    default, _ = F.dropout_forward(x, 0.4, seed=5, stream=1, offset=0)
    assert np.array_equal(default, whole)


def test_negative_offset_is_refused():
    with pytest.raises(ValueError, match="offset"):
        F.dropout_forward(np.ones((2, 2)), 0.5, offset=-1)
