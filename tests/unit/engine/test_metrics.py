"""Metrics against hand-computed values."""

import pytest
import torch

from kdistill.engine.metrics import ClassificationMeter, expected_calibration_error, topk_correct


def test_topk():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0]])
    targets = torch.tensor([0, 2, 0])
    assert topk_correct(logits, targets, ks=(1, 2, 5)) == {1: 1, 2: 2, 5: 3}


def test_ece_hand_computed():
    conf = torch.tensor([0.95, 0.95, 0.55, 0.55])
    correct = torch.tensor([True, False, True, True])
    # bin of 0.95: accuracy 0.5, gap 0.45; bin of 0.55: accuracy 1.0, gap 0.45 -> ECE 0.45
    assert expected_calibration_error(conf, correct) == pytest.approx(0.45)


def test_meter():
    meter = ClassificationMeter(3)
    logits = torch.tensor([[5.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [5.0, 0.0, 0.0]])
    meter.update(logits, torch.tensor([0, 1, 1, 0]), loss_sum=4.0)
    r = meter.result()
    assert r["top1"] == 0.75 and r["loss"] == 1.0
    assert r["top_class_share"] == 0.75 and r["majority_share"] == 0.5
    assert meter.all_predictions().tolist() == [0, 0, 1, 0]
