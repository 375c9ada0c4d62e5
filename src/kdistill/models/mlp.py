"""Fully connected networks (Hinton et al. 2015 used 2x1200 teachers and 2x800 students on MNIST)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class MLP(nn.Module):
    """Flatten, then ``Linear -> ReLU -> Dropout`` per hidden layer, then a linear classifier.

    Args:
        in_features: size of the flattened input.
        num_classes: number of outputs.
        hidden: widths of the hidden layers (``[]`` gives logistic regression).
        dropout: dropout after each hidden layer.
        input_dropout: dropout on the input (Hinton's teacher used 20%).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (800, 800),
        dropout: float = 0.0,
        input_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, p in (("dropout", dropout), ("input_dropout", input_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"mlp {name} must be in [0, 1), got {p}")
        if any(int(h) < 1 for h in hidden):
            raise ValueError(f"mlp hidden widths must be >= 1, got {list(hidden)}")
        layers: list[nn.Module] = [nn.Flatten()]
        if input_dropout:
            layers.append(nn.Dropout(input_dropout))
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU(inplace=True)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = int(h)
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def build_mlp(
    num_classes: int,
    in_channels: int,
    input_size: int | None,
    hidden: Sequence[int] = (800, 800),
    dropout: float = 0.0,
    input_dropout: float = 0.0,
) -> MLP:
    """An :class:`MLP` for ``in_channels x input_size x input_size`` images, or for flat vectors
    of ``in_channels`` features (``input_size=None``)."""
    in_features = in_channels if input_size is None else in_channels * input_size * input_size
    return MLP(in_features, num_classes, hidden, dropout, input_dropout)
