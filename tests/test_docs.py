"""docs/errors.md and docs/semantics.md are tested row by row."""

from __future__ import annotations

import builtins
import re
from pathlib import Path

import numpy as np
import pytest

import xpcnn
from xpcnn import functional as F
from xpcnn import nn, optim

DOCS = Path(__file__).parents[1] / "docs"
ROW = re.compile(r"^\| (\d+) \| `(.+)` \| (\w+) \| (.+) \|$")


def _error_rows():
    rows = [ROW.match(line) for line in (DOCS / "errors.md").read_text().splitlines()]
    return [pytest.param(m.group(2), m.group(3), m.group(4), id=m.group(1)) for m in rows if m]


ERROR_ROWS = _error_rows()


def test_the_catalogue_has_at_least_40_rows():
    assert len(ERROR_ROWS) >= 40


@pytest.mark.parametrize("call, exception, message", ERROR_ROWS)
def test_error_catalogue_row(call, exception, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # rows that save or load files do it in a temporary folder
    model = nn.Sequential(nn.Linear(4, 2))
    names = dict(np=np, F=F, nn=nn, optim=optim, xpcnn=xpcnn,
                 X=np.zeros((1, 4, 6, 6)), W=np.zeros((2, 4, 3, 3)), L=np.zeros((3, 4)),
                 M=model, O=optim.SGD(model.parameters(), lr=0.1),
                 XT=np.zeros((3, 4), np.float32), YT=np.zeros((3, 2), np.float32))
    if "T." in call:
        names["T"] = pytest.importorskip("torch")
    if "S." in call:
        names["S"] = pytest.importorskip("array_api_strict")
    with pytest.raises(getattr(builtins, exception)) as info:
        eval(call, names)
    assert type(info.value).__name__ == exception
    assert message in str(info.value), f"{message!r} not in {str(info.value)!r}"
