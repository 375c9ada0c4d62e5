"""A model file records the structure of the student's latest structural change."""

from kdistill.compression.callbacks import ChannelPruning, UnstructuredPruning, structure_record
from kdistill.policies import ChannelPruningPolicy, PruningPolicy


def test_the_latest_structural_change_is_recorded_whatever_the_callback_order():
    channel = ChannelPruning(ChannelPruningPolicy(ratio=0.5, starting_epoch=3), (1, 8, 8), print)
    removal = UnstructuredPruning(
        PruningPolicy(structure="filters", scope="per_layer", ending_epoch=2, remove_epoch=1),
        5, (1, 8, 8), print,
    )  # fmt: skip
    removal.shapes, removal.removed = {"conv": {"out": 4}}, True
    assert structure_record([channel, removal])["layer_shapes"] == {"conv": {"out": 4}}
    channel.shapes, channel.steps_done = {"conv": {"out": 2}}, 1  # channel pruning at epoch 3
    assert structure_record([channel, removal])["layer_shapes"] == {"conv": {"out": 2}}
    assert structure_record([removal, channel])["layer_shapes"] == {"conv": {"out": 2}}
