"""The report's greedy continuations: a pretrained teacher's once, then each group's model."""

from pathlib import Path

from kdistill.record import RunRecord
from kdistill.reporting.collect import Group, Run
from kdistill.reporting.report import continuations


def group(label, role, said):
    record = RunRecord(
        name=label, run_dir=label, config_hash="0", seed=0, mode="distill", arch="gpt_nano",
        dataset="pydocs", epochs=1, test_samples=1, test_top1=0.0, test_top5=0.0,
        test_loss=1.0, test_ece=0.0, best_test_top1=0.0, best_epoch=0, params=1, macs=1,
        size_bytes=1, epoch_times_s=(1.0,), total_time_s=1.0, kdistill_version="0",
        torch_version="0", git_sha=None, continuations=said,
    )  # fmt: skip
    return Group(key=(label, "0"), runs=[Run(Path(label), record, [])], role=role, label=label)


def test_a_pretrained_teacher_is_shown_once_before_the_students():
    groups = [
        group("scratch", "scratch", {"student": {"A": " b"}}),
        group("fwd", "distilled", {"student": {"A": " c"}, "teacher": {"A": " t"}}),
        group("rev", "distilled", {"student": {"A": " d"}, "teacher": {"A": " t"}}),
        group("old", "distilled", None),  # a record from before continuations were kept
    ]
    assert continuations(groups) == {
        "A": [("teacher", " t"), ("scratch (scratch)", " b"), ("fwd (distilled)", " c"),
              ("rev (distilled)", " d")]
    }  # fmt: skip
    # a teacher trained among the runs speaks for itself, in its own group
    trained = [group("teacher-run", "teacher", {"student": {"A": " t"}}), *groups[1:2]]
    assert continuations(trained) == {"A": [("teacher-run (teacher)", " t"),
                                            ("fwd (distilled)", " c")]}  # fmt: skip
