"""Learning-rate schedules as functions of the step."""

import itertools
import math

import pytest

from kdistill.config import ScheduleConfig
from kdistill.engine.schedule import build_lr_factor


def factors(cfg, steps_per_epoch=10, epochs=10):
    f = build_lr_factor(cfg, steps_per_epoch=steps_per_epoch, epochs=epochs)
    return [f(s) for s in range(steps_per_epoch * epochs)]


def test_cosine_from_peak_to_floor():
    values = factors(ScheduleConfig(name="cosine", min_lr_ratio=0.1))
    assert values[0] == 1.0
    assert values[50] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert values[-1] == pytest.approx(0.1, abs=0.01)
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_warmup_then_cosine():
    values = factors(ScheduleConfig(name="cosine", warmup_epochs=2))
    assert values[:3] == pytest.approx([0.05, 0.1, 0.15])
    assert values[19] == pytest.approx(1.0) and values[20] == pytest.approx(1.0)


def test_multistep():
    values = factors(ScheduleConfig(name="multistep", milestones=(3, 6), gamma=0.5))
    assert values[29] == 1.0 and values[30] == 0.5 and values[60] == 0.25


def test_multistep_with_a_factor_per_milestone_and_exponential():
    values = factors(ScheduleConfig(name="multistep", milestones=(3, 6), gammas=(0.5, 0.1)))
    assert values[29] == 1.0 and values[30] == 0.5 and values[60] == pytest.approx(0.05)
    values = factors(ScheduleConfig(name="exponential", gamma=0.9))
    assert (
        values[9] == 1.0 and values[10] == pytest.approx(0.9) and values[35] == pytest.approx(0.729)
    )
    with pytest.raises(ValueError, match="2 factors for 1 milestones"):
        ScheduleConfig(name="multistep", milestones=(3,), gammas=(0.5, 0.1))


def test_onecycle_rises_then_falls():
    values = factors(
        ScheduleConfig(name="onecycle", pct_start=0.3, div_factor=10, final_div_factor=100)
    )
    peak = values.index(max(values))
    assert peak == 30 and values[0] == pytest.approx(0.1)
    assert 0.001 < values[-1] < 0.002  # the last step is one step short of the final 0.001
    end = build_lr_factor(
        ScheduleConfig(name="onecycle", pct_start=0.3, div_factor=10, final_div_factor=100),
        steps_per_epoch=10,
        epochs=10,
    )(100)
    assert end == pytest.approx(0.001)


def test_constant_and_bad_warmup():
    assert set(factors(ScheduleConfig(name="constant"))) == {1.0}
    with pytest.raises(ValueError, match="whole run"):
        build_lr_factor(ScheduleConfig(warmup_epochs=10), steps_per_epoch=5, epochs=10)
