"""A cached run starts without running its teacher: the teacher's check and precision come from
what the cache already knows, and only when that is checked."""

import json

import pytest

from kdistill.config import apply_overrides
from kdistill.experiment import TeacherCheckError, run
from kdistill.experiment import teachers as teachers_module

from .conftest import digits_config


def cached_config(tmp_path, teacher_run, *extra):
    return digits_config(
        tmp_path,
        f"kd.teachers.0.checkpoint={teacher_run.run_dir}",
        "kd.teacher_cache.enabled=true",
        "train.epochs=1",
        *extra,
    )


@pytest.fixture
def teacher_evaluations(monkeypatch):
    """How many times a teacher is evaluated on the test split."""
    calls = []
    real = teachers_module.evaluate

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(teachers_module, "evaluate", counted)
    return calls


def memos(tmp_path):
    return sorted(tmp_path.glob("teacher-cache/*/teacher-check-*.json"))


def test_a_cached_run_recalls_the_teachers_check(tmp_path, teacher_run, teacher_evaluations):
    cfg = cached_config(tmp_path, teacher_run, "kd.teacher_precision=fp32")
    first = run(cfg, progress=False, log=lambda _: None)
    assert len(teacher_evaluations) == 1 and len(memos(tmp_path)) == 1
    lines = []
    again = run(cfg, force=True, progress=False, log=lines.append)
    assert len(teacher_evaluations) == 1  # not evaluated again
    (said,) = [line for line in lines if line.startswith("teacher 0:")]
    assert said.endswith(f"(checked before: {memos(tmp_path)[0].name})")
    # the same figures: the teacher's accuracy, and the student's agreement with its predictions
    assert again.record.teacher_test_top1 == first.record.teacher_test_top1
    assert again.record.teachers[0].test_top1 == first.record.teachers[0].test_top1
    assert again.record.test_agreement == first.record.test_agreement
    assert again.record.test_top1 == first.record.test_top1


def test_a_changed_or_damaged_check_is_not_trusted(tmp_path, teacher_run, teacher_evaluations):
    cfg = cached_config(tmp_path, teacher_run, "kd.teacher_precision=fp32")
    run(cfg, progress=False, log=lambda _: None)
    (memo,) = memos(tmp_path)
    saved = json.loads(memo.read_text())
    saved["content"]["metrics"]["top1"] = 1.0  # a better teacher than it is
    memo.write_text(json.dumps(saved))
    lines = []
    run(cfg, force=True, progress=False, log=lines.append)
    assert len(teacher_evaluations) == 2
    assert any("does not match its checksum); evaluating the teacher" in line for line in lines)
    assert json.loads(memo.read_text())["content"]["metrics"]["top1"] < 1.0  # rewritten
    # another test split setting (here the evaluation batch): another key, evaluated once more
    other = apply_overrides(cfg, ["data.eval_batch_size=100"])
    run(other, progress=False, log=lambda _: None)
    assert len(teacher_evaluations) == 3 and len(memos(tmp_path)) == 2


def test_a_recalled_check_still_refuses_a_weak_teacher(tmp_path, teacher_run, teacher_evaluations):
    cfg = cached_config(tmp_path, teacher_run, "kd.teacher_precision=fp32")
    run(cfg, progress=False, log=lambda _: None)
    strict = apply_overrides(cfg, ["kd.min_teacher_top1=0.9999"])
    lines = []
    with pytest.raises(TeacherCheckError, match="kd.min_teacher_top1"):
        run(strict, progress=False, log=lines.append)
    assert len(teacher_evaluations) == 1
    assert any("checked before" in line for line in lines)


def test_auto_precision_follows_a_finished_cache_without_timing_the_teacher(
    tmp_path, teacher_run, monkeypatch
):
    from kdistill.experiment import precision

    monkeypatch.setattr(precision, "native_bf16", lambda device: "the CPU has amx_bf16")
    monkeypatch.setattr(precision, "PROBE_MARGIN", 10.0)  # bf16 "wins" whenever it is timed
    probes = []
    real = teachers_module.forward_probe

    def counted(*args, **kwargs):
        timed = real(*args, **kwargs)

        def probe():
            probes.append(1)
            return timed()

        return probe

    monkeypatch.setattr(teachers_module, "forward_probe", counted)
    auto = cached_config(tmp_path, teacher_run)
    first = run(auto, progress=False, log=lambda _: None)  # no cache yet: timed, bf16
    assert len(probes) == 1 and first.record.teacher_precision.startswith("bf16 (auto: the CPU")
    lines = []
    again = run(auto, force=True, progress=False, log=lines.append)
    assert len(probes) == 1  # the cache says which precision: nothing timed
    assert again.record.teacher_precision.startswith("bf16 (auto: the teacher cache")
    assert any("holds its outputs in bf16" in line for line in lines)
    assert again.record.test_top1 == first.record.test_top1
    # a cache built in fp32 is followed the same way
    fp32 = apply_overrides(auto, ["kd.teacher_precision=fp32", "kd.teacher_cache.dtype=float32"])
    run(fp32, progress=False, log=lambda _: None)
    follows = run(apply_overrides(fp32, ["kd.teacher_precision=auto"]), progress=False, log=print)
    assert len(probes) == 1
    assert follows.record.teacher_precision.startswith("fp32 (auto: the teacher cache")
    # an online run (no cache) times the teacher when it is built
    online = apply_overrides(auto, ["kd.teacher_cache.enabled=false"])
    run(online, progress=False, log=lambda _: None)
    assert len(probes) == 2
