"""passes/_layout.py: a chain of Transposes and Reshapes is one Reshape -> Transpose -> Reshape, found
exactly (checked on index arrays), and a chain that only regroups memory is recognised as a Reshape."""

from __future__ import annotations

import random

import numpy as np
import pytest

from vidcc.passes._layout import Layout, NotLayout


def _apply(lay: Layout, a: np.ndarray, ops) -> np.ndarray:
    for kind, arg in ops:
        a = a.transpose(arg) if kind == "T" else a.reshape(arg)
        lay.transpose(arg) if kind == "T" else lay.reshape(arg)
    return a


def _random_chain(rng: random.Random, shape: list[int]):
    ops, cur = [], list(shape)
    for _ in range(rng.randint(1, 5)):
        if rng.random() < 0.5:
            perm = list(range(len(cur)))
            rng.shuffle(perm)
            ops.append(("T", perm))
            cur = [cur[p] for p in perm]
        else:
            rest, dims = int(np.prod(cur)), []
            for f in (2, 3, 2, 5, 2, 4):
                if rest % f == 0 and rng.random() < 0.5:
                    dims.append(f)
                    rest //= f
            dims.append(rest)
            rng.shuffle(dims)
            if rng.random() < 0.3:
                dims.insert(rng.randint(0, len(dims)), 1)
            ops.append(("R", dims))
            cur = dims
    return ops


def test_random_chains_plan_exactly():
    rng, followed = random.Random(0), 0
    for _ in range(600):
        shape = [rng.choice([1, 2, 3, 4, 6]) for _ in range(rng.randint(1, 4))]
        ops = _random_chain(rng, shape)
        a = np.arange(int(np.prod(shape))).reshape(shape)
        lay = Layout(shape)
        try:
            want = _apply(lay, a, ops)
        except NotLayout:
            continue  # a transpose after a reshape that cuts dims apart: not one Transpose
        p = lay.plan()
        got = a.reshape(p.pre).transpose(p.perm).reshape(p.post)
        assert got.shape == want.shape and (got == want).all(), (shape, ops, p)
        assert p.moves == (not (want.reshape(-1) == np.arange(want.size)).all())
        assert len(p.pre) == len(p.perm) and (not p.moves or len(p.pre) > 1)
        followed += 1
    assert followed > 500


@pytest.mark.parametrize("shape,ops,moves", [
    # an NhwcConv's output seen as NCHW, viewed as SVD's [1, C, F, H*W] and turned channels-last again
    ((4, 8, 8, 64), [("T", [0, 3, 1, 2]), ("R", [1, 4, 64, 8, 8]), ("T", [0, 2, 1, 3, 4]), ("R", [1, 64, 4, 64]),
                     ("T", [0, 2, 3, 1])], False),
    # AnimateDiff's motion-module tokens [H*W, F, C] back to [F, H, W, C]
    ((64, 4, 256), [("R", [1, 8, 8, 4, 256]), ("T", [0, 3, 4, 1, 2]), ("R", [4, 256, 8, 8]), ("T", [0, 2, 3, 1])], True),
])
def test_unet_chains(shape, ops, moves):
    lay = Layout(shape)
    _apply(lay, np.zeros(shape), ops)
    plan = lay.plan()
    assert plan.moves == moves
    if moves:
        assert plan.pre == (64, 4, 256) and plan.perm == (1, 0, 2)
