"""The first epoch with the student's final form (``RunConfig.final_form_epoch``): the trainer
chooses the best epoch from there on, so ``best.safetensors`` is the compressed model."""

import pytest

from kdistill.config import load_config

PRUNE = {"kind": "pruning", "target_sparsity": 0.5, "starting_epoch": 1}


@pytest.mark.parametrize(
    ("policies", "epochs", "first"),
    [
        ([], 5, 0),
        ([{"kind": "regularization", "type": "l1", "weight": 1e-4}], 5, 0),  # not compression
        ([{"kind": "quantization", "starting_epoch": 2}], 5, 2),
        ([{**PRUNE, "ending_epoch": 4}], 8, 3),  # AGP reaches the target in ending_epoch - 1
        ([PRUNE], 8, 7),  # no end: the target in the run's last epoch
        ([{**PRUNE, "ending_epoch": 20}], 8, 7),  # a window past the run: its last epoch
        ([{**PRUNE, "schedule": "one_shot", "starting_epoch": 2}], 8, 2),
        (
            [
                {
                    **PRUNE,
                    "ending_epoch": 3,
                    "structure": "filters",
                    "scope": "per_layer",
                    "remove_epoch": 5,
                }
            ],
            8,
            5,
        ),
        (
            [
                {
                    "kind": "channel_pruning",
                    "starting_epoch": 1,
                    "iterative_steps": 3,
                    "frequency": 2,
                }
            ],
            10,
            5,
        ),
        ([{"kind": "thinning", "epochs": [1, 4]}], 6, 4),
        (
            [
                {"kind": "channel_pruning", "starting_epoch": 1},
                {"kind": "quantization", "starting_epoch": 3},
            ],
            6,
            3,
        ),
    ],
)
def test_the_last_compression_step_opens_the_choice_of_the_best_epoch(policies, epochs, first):
    values = {"train.epochs": epochs, "policies": policies}
    assert load_config("fashion-mnist/lenet5-scratch", values=values).final_form_epoch == first


def test_language_model_pruning_and_quantization_count_too():
    recipe = "pydocs/smollm2-distill"
    cut = {"kind": "lm_pruning", "starting_epoch": 1, "layers": 20}
    cfg = load_config(recipe, values={"train.epochs": 4, "policies": [cut]})
    assert cfg.final_form_epoch == 1
    quantized = {"kind": "lm_quantization", "starting_epoch": 2}
    cfg = load_config(recipe, values={"train.epochs": 4, "policies": [cut, quantized]})
    assert cfg.final_form_epoch == 2


def test_shipped_recipes_choose_among_compressed_epochs():
    assert load_config("fashion-mnist/lenet5-agp80").final_form_epoch == 6
    assert load_config("cifar10/resnet18-channels50-distill").final_form_epoch == 4
    assert load_config("fashion-mnist/lenet5-w4a8-qat").final_form_epoch == 0


def test_the_runs_loop_carries_it_to_the_trainer():
    import torch

    from kdistill.experiment.loop import build_loop

    cfg = load_config("fashion-mnist/lenet5-agp80")
    loop = build_loop(cfg, torch.device("cpu"), 10, batches_per_epoch=4, world=1)
    assert loop.selectable_from == cfg.final_form_epoch == 6
