"""Static timestep schedules: Wan2.2's expert split and equality with diffusers' UniPC scheduler."""

import numpy as np
import pytest

from vidcc.errors import VidccError
from vidcc.schedules import make_schedule, parse_bind, parse_schedule


@pytest.mark.parametrize("name,high,low", [("wan22-t2v", 26, 14), ("wan22-i2v", 15, 25)])
def test_wan22_expert_split(name, high, low):
    s = parse_schedule(name)
    assert s.steps == 40 and len(s.timesteps) == 40
    assert s.counts() == {"high-noise": high, "low-noise": low}
    # the high-noise expert runs first, then the low-noise one, never back
    experts = [s.expert(i) for i in range(s.steps)]
    assert experts == ["high-noise"] * high + ["low-noise"] * low
    assert list(s.timesteps) == sorted(s.timesteps, reverse=True) and s.timesteps[0] == 999


def test_matches_diffusers_unipc():
    schedulers = pytest.importorskip("diffusers.schedulers.scheduling_unipc_multistep")
    for steps, shift in [(40, 12.0), (40, 5.0), (50, 5.0), (7, 1.0), (30, 3.0)]:
        sch = schedulers.UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=shift, prediction_type="flow_prediction")
        sch.set_timesteps(steps)
        ours = make_schedule(steps, shift)
        assert list(ours.timesteps) == sch.timesteps.tolist()
        np.testing.assert_allclose(ours.sigmas, sch.sigmas.numpy()[:-1], rtol=1e-6)


def test_explicit_options_and_overrides():
    assert parse_schedule("steps=40,shift=12,boundary=0.875").timesteps == parse_schedule("wan22-t2v").timesteps
    assert parse_schedule("wan22-t2v:steps=20").steps == 20
    assert parse_schedule("steps=10,shift=1").boundary is None
    for bad in ["nope", "steps=x,shift=1", "steps=10", "steps=10,shift=1,boundary=2", "wan22-t2v:color=red"]:
        with pytest.raises(VidccError):
            parse_schedule(bad)


def test_parse_bind():
    assert parse_bind(["timestep=999,980.5", "guidance=5"]) == {"timestep": [999, 980.5], "guidance": [5]}
    for bad in ["timestep", "timestep=", "=1", "timestep=a,b"]:
        with pytest.raises(VidccError):
            parse_bind([bad])
