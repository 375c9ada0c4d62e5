"""The teacher-against-scratch check warns only about a teacher that is worse beyond noise."""

from pathlib import Path

from kdistill.experiment.health import teacher_versus_scratch


def test_a_teacher_as_good_as_scratch_is_not_flagged():
    # the demo: teacher and scratch MLP both 97.77% on 359 digits; distillation still helps
    assert teacher_versus_scratch(0.9777, [(Path("s"), 0.9777)], 359, print) == []
    assert teacher_versus_scratch(0.9749, [(Path("s"), 0.9777)], 359, print) == []  # 1 image


def test_a_teacher_worse_beyond_noise_is_flagged():
    messages = []
    (warning,) = teacher_versus_scratch(
        0.90, [(Path("a"), 0.93), (Path("b"), 0.95)], 10000, messages.append
    )
    assert "worse than this student trained from scratch (95.00%, b)" in warning
    assert messages == [f"WARNING: {warning}"]
    assert teacher_versus_scratch(0.90, [], 10000, print) == []
