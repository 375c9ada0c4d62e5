"""Loss terms: each distillation method as a weighted term of :class:`MethodDistiller`'s loss.

A term is a module (so adapters and CRD's heads train with the student and are saved in
checkpoints) that computes its *unweighted* value from the batch's student and teacher outputs
and features; :meth:`Term.weight_at` gives its weight at an epoch (warm-ups). The math is in
:mod:`kdistill.losses.methods` and :mod:`kdistill.losses.crd`; :func:`build_term` makes a term
from a method name in :data:`kdistill.methods.METHODS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from kdistill.losses import methods as M
from kdistill.losses.crd import CRDLoss
from kdistill.losses.functional import soft_target_kl, student_cross_entropy
from kdistill.methods import METHODS, method_info
from kdistill.types import TeacherOutput
from kdistill.validation import same_temperature

Shapes = Mapping[str, tuple[int, ...]]


@dataclass
class TermInputs:
    """What a term sees of one batch.

    Attributes:
        student_logits: ``(N, C)``, with gradient.
        teacher: the teacher's output (logits, or probabilities at some temperature).
        targets: ``(N,)`` labels or ``None``.
        student_features, teacher_features: tapped layer outputs by module name.
        sample_ids: the batch's stable sample ids (``None`` if the loader has none).
        epoch: the current epoch (0-based).
    """

    student_logits: Tensor
    teacher: TeacherOutput
    targets: Tensor | None
    student_features: Mapping[str, Tensor]
    teacher_features: Mapping[str, Tensor]
    sample_ids: Tensor | None
    epoch: int


class Term(nn.Module):
    """One weighted loss term.

    Attributes:
        part: its name among the loss parts (logs, metrics): the method's name, ``"distill"``
            for Hinton's term (as :class:`~kdistill.Distiller` reports it).
        weight: its weight.
        pairs: ``(student layer, teacher layer)`` pairs it reads (empty for logit methods).
    """

    part: str = ""
    pairs: tuple[tuple[str, str], ...] = ()
    trains_teacher: bool = False  # its gradient reaches a jointly trained teacher

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = float(weight)

    @property
    def needs_features(self) -> bool:
        return bool(self.pairs)

    def weight_at(self, epoch: int) -> float:
        """The weight at ``epoch`` (0-based)."""
        return self.weight

    def exclusive_at(self, epoch: int) -> bool:
        """Whether this term is the whole loss at ``epoch`` (FitNets' hint stage)."""
        return False

    def extra_repr(self) -> str:
        pairs = f", pairs={list(self.pairs)}" if self.pairs else ""
        return f"weight={self.weight}{pairs}"


def teacher_scores(teacher: TeacherOutput, temperature: float, method: str) -> dict[str, Tensor]:
    """``{"teacher_logits": ...}`` or ``{"teacher_probs": ...}`` for a loss at ``temperature``;
    probabilities made at another temperature are an error naming ``method``."""
    if teacher.logits is not None:
        return {"teacher_logits": teacher.logits}
    if not same_temperature(teacher.temperature, temperature):  # type: ignore[arg-type]
        raise ValueError(
            f"{method} uses temperature {temperature}, but the teacher gave probabilities at "
            f"temperature {teacher.temperature} (a top-k teacher cache): use a cache of full "
            "logits (kd.teacher_cache.topk: null) or the same temperature"
        )
    return {"teacher_probs": teacher.probs}  # type: ignore[dict-item]


def _standardized(x: TermInputs, method: str) -> tuple[Tensor, TeacherOutput]:
    if x.teacher.logits is None:
        raise ValueError(
            f"{method} with standardize: true needs teacher logits, but the teacher gave "
            "probabilities (a top-k teacher cache); use a cache of full logits"
        )
    return M.standardize_logits(x.student_logits), TeacherOutput(
        logits=M.standardize_logits(x.teacher.logits)
    )


class HintonTerm(Term):
    """Hinton's soft-target term: ``KL(p_t || p_s)`` at T (the ``"distill"`` part), weighted by
    ``weight * T**2`` when ``scale_by_t2``."""

    part = "distill"

    def __init__(
        self,
        weight: float,
        temperature: float,
        *,
        scale_by_t2: bool = True,
        standardize: bool = False,
    ) -> None:
        super().__init__(weight)
        self.temperature = float(temperature)
        self.scale_by_t2 = bool(scale_by_t2)
        self.standardize = bool(standardize)

    def weight_at(self, epoch: int) -> float:
        return self.weight * (self.temperature**2 if self.scale_by_t2 else 1.0)

    def forward(self, x: TermInputs) -> Tensor:
        student, teacher = (
            _standardized(x, "kd") if self.standardize else (x.student_logits, x.teacher)
        )
        return soft_target_kl(
            student, **teacher_scores(teacher, self.temperature, "kd"), temperature=self.temperature
        )


class TeacherLabelsTerm(Term):
    """Joint teacher training (Distiller's ``--kd-tw``): the teacher's own cross-entropy on the
    labels (the ``"teacher"`` part). The teacher then trains with the student; its soft targets
    stay detached in every other term, so distillation never moves it."""

    part = "teacher"
    trains_teacher = True

    def __init__(self, weight: float, *, ignore_index: int = -100) -> None:
        super().__init__(weight)
        self.ignore_index = int(ignore_index)

    def forward(self, x: TermInputs) -> Tensor:
        if x.teacher.logits is None or x.targets is None:
            raise ValueError(
                "joint teacher training (teacher_weight > 0) needs the teacher's logits and the "
                "labels"
            )
        return student_cross_entropy(x.teacher.logits, x.targets, ignore_index=self.ignore_index)


class DKDTerm(Term):
    """Decoupled KD, with its linear warm-up: weight ``* min((epoch + 1) / warmup_epochs, 1)``."""

    part = "dkd"

    def __init__(
        self,
        weight: float,
        *,
        alpha: float,
        beta: float,
        temperature: float,
        warmup_epochs: int,
        standardize: bool,
        ignore_index: int = -100,
    ) -> None:
        super().__init__(weight)
        self.alpha, self.beta, self.temperature = float(alpha), float(beta), float(temperature)
        self.warmup_epochs = int(warmup_epochs)
        self.standardize = bool(standardize)
        self.ignore_index = ignore_index

    def weight_at(self, epoch: int) -> float:
        if self.warmup_epochs <= 0:
            return self.weight
        return self.weight * min((epoch + 1) / self.warmup_epochs, 1.0)

    def forward(self, x: TermInputs) -> Tensor:
        if x.targets is None:
            raise ValueError("dkd needs labels: the target class is what it decouples")
        student, teacher = (
            _standardized(x, "dkd") if self.standardize else (x.student_logits, x.teacher)
        )
        scores = teacher_scores(teacher, self.temperature, "dkd")
        return M.dkd_loss(
            student,
            scores.get("teacher_logits"),
            x.targets,
            self.alpha,
            self.beta,
            self.temperature,
            teacher_probs=scores.get("teacher_probs"),
            ignore_index=self.ignore_index,
        )


class DISTTerm(Term):
    """DIST's inter- and intra-class relation losses."""

    part = "dist"

    def __init__(self, weight: float, *, beta: float, gamma: float, temperature: float) -> None:
        super().__init__(weight)
        self.beta, self.gamma, self.temperature = float(beta), float(gamma), float(temperature)

    def forward(self, x: TermInputs) -> Tensor:
        scores = teacher_scores(x.teacher, self.temperature, "dist")
        return M.dist_loss(
            x.student_logits,
            scores.get("teacher_logits"),
            self.beta,
            self.gamma,
            self.temperature,
            teacher_probs=scores.get("teacher_probs"),
        )


class FeatureTerm(Term):
    """A feature method: its loss summed over the layer pairs."""

    def __init__(
        self,
        part: str,
        weight: float,
        pairs: Sequence[tuple[str, str]],
        loss: Callable[[Tensor, Tensor], Tensor],
    ) -> None:
        super().__init__(weight)
        self.part = part
        self.pairs = tuple(pairs)
        self.loss = loss

    def student_side(self, index: int, features: Tensor) -> Tensor:
        """The student's features of pair ``index`` as the loss compares them."""
        return features

    def forward(self, x: TermInputs) -> Tensor:
        total = None
        for i, (s, t) in enumerate(self.pairs):
            value = self.loss(self.student_side(i, x.student_features[s]), x.teacher_features[t])
            total = value if total is None else total + value
        assert total is not None
        return total


def _adapter(
    student: tuple[int, ...], teacher: tuple[int, ...], pair: tuple[str, str]
) -> nn.Module:
    """FitNets' regressor from the student's feature shape to the teacher's: a 1x1 convolution
    with BatchNorm for maps, a linear layer for flat features; nothing when they match."""
    s_shape, t_shape = student[1:], teacher[1:]
    if s_shape == t_shape:
        return nn.Identity()
    if len(s_shape) == 3 and len(t_shape) == 3 and s_shape[1:] == t_shape[1:]:
        return nn.Sequential(
            nn.Conv2d(s_shape[0], t_shape[0], kernel_size=1, bias=False), nn.BatchNorm2d(t_shape[0])
        )
    if len(s_shape) == 1 and len(t_shape) == 1:
        return nn.Linear(s_shape[0], t_shape[0])
    raise ValueError(
        f"fitnet pair {pair[0]!r} -> {pair[1]!r}: student features {list(student)} cannot be "
        f"mapped to teacher features {list(teacher)} by a 1x1 convolution or a linear layer "
        "(spatial sizes must match); choose layers of the same resolution"
    )


class FitNetTerm(FeatureTerm):
    """FitNets hints through adapters built from the observed shapes; optional hint stage."""

    def __init__(
        self,
        weight: float,
        pairs: Sequence[tuple[str, str]],
        student_shapes: Shapes,
        teacher_shapes: Shapes,
        *,
        hint_epochs: int = 0,
    ) -> None:
        super().__init__("fitnet", weight, pairs, M.fitnet_loss)
        self.hint_epochs = int(hint_epochs)
        self.adapters = nn.ModuleList(
            _adapter(student_shapes[s], teacher_shapes[t], (s, t)) for s, t in self.pairs
        )

    def student_side(self, index: int, features: Tensor) -> Tensor:
        return self.adapters[index](features)

    def exclusive_at(self, epoch: int) -> bool:
        return epoch < self.hint_epochs


class CRDTerm(FeatureTerm):
    """CRD on one pair of (flattened) features."""

    def __init__(self, weight: float, pair: tuple[str, str], crd: CRDLoss) -> None:
        super().__init__("crd", weight, [pair], self._unused)
        self.crd = crd

    @staticmethod
    def _unused(s: Tensor, t: Tensor) -> Tensor:
        raise AssertionError("CRDTerm computes its loss in forward")

    def forward(self, x: TermInputs) -> Tensor:
        s, t = self.pairs[0]
        if x.sample_ids is None:
            raise ValueError("crd needs the batch's sample ids; kdistill's loaders give them")
        return self.crd(x.student_features[s], x.teacher_features[t], x.sample_ids)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape[1:]:
        n *= d
    return n


def build_term(
    name: str,
    weight: float,
    args: Mapping[str, Any],
    pairs: Sequence[tuple[str, str]],
    *,
    kd_temperature: float,
    scale_by_t2: bool,
    standardize: bool,
    student_shapes: Shapes,
    teacher_shapes: Shapes,
    train_ids: Tensor | None = None,
    train_labels: Tensor | None = None,
) -> Term:
    """The term of method ``name`` (settings already merged with their defaults).

    Args:
        name, weight, args, pairs: the method, its weight, settings and layer pairs.
        kd_temperature, scale_by_t2, standardize: the kd section's settings (Hinton's term).
        student_shapes, teacher_shapes: output shapes of the tapped layers for one sample.
        train_ids, train_labels: the training set's sample ids and labels (CRD's memory).
    """
    info = method_info(name)
    if info.needs_features and not pairs:
        raise ValueError(
            f"{name} needs layer pairs: kd.methods[...].pairs or kd.features, e.g. "
            "[{student: layer3, teacher: layer3}]"
        )
    if not info.needs_features and pairs:
        raise ValueError(f"{name} reads logits only; it takes no layer pairs")
    if info.pairs == "one" and len(pairs) != 1:
        raise ValueError(f"{name} takes exactly one layer pair, got {len(pairs)}")
    context = TermContext(
        weight, args, [tuple(p) for p in pairs], kd_temperature, scale_by_t2, standardize,  # type: ignore[misc]
        student_shapes, teacher_shapes, train_ids, train_labels,
    )  # fmt: skip
    return TERMS[name](context)


@dataclass(frozen=True)
class TermContext:
    """What building a method's term may read (see :func:`build_term`)."""

    weight: float
    args: Mapping[str, Any]
    pairs: list[tuple[str, str]]
    kd_temperature: float
    scale_by_t2: bool
    standardize: bool
    student_shapes: Shapes
    teacher_shapes: Shapes
    train_ids: Tensor | None
    train_labels: Tensor | None


def _feature(name: str, loss: Callable[[Mapping[str, Any]], Any]) -> Callable[[TermContext], Term]:
    """A feature method whose loss of ``(student, teacher)`` features takes its settings."""
    return lambda c: FeatureTerm(name, c.weight, c.pairs, loss(c.args))


def _crd(c: TermContext) -> Term:
    if c.train_ids is None or c.train_labels is None:
        raise ValueError("crd needs the training set's sample ids and labels")
    s, t = c.pairs[0]
    crd = CRDLoss(
        _numel(c.student_shapes[s]),
        _numel(c.teacher_shapes[t]),
        c.train_ids,
        c.train_labels,
        feat_dim=int(c.args["feat_dim"]),
        nce_k=int(c.args["nce_k"]),
        nce_t=float(c.args["nce_t"]),
        nce_m=float(c.args["nce_m"]),
    )
    return CRDTerm(c.weight, (s, t), crd)


TERMS: dict[str, Callable[[TermContext], Term]] = {
    "kd": lambda c: HintonTerm(
        c.weight, c.kd_temperature, scale_by_t2=c.scale_by_t2, standardize=c.standardize
    ),
    "dkd": lambda c: DKDTerm(c.weight, **c.args),
    "dist": lambda c: DISTTerm(c.weight, **c.args),
    "fitnet": lambda c: FitNetTerm(c.weight, c.pairs, c.student_shapes, c.teacher_shapes, **c.args),
    "at": _feature(
        "at",
        lambda a: (
            lambda s, t: M.attention_transfer_loss(s, t, float(a["p"]), resize=bool(a["resize"]))
        ),
    ),
    "rkd": _feature(
        "rkd",
        lambda a: (
            lambda s, t: M.rkd_loss(s, t, float(a["distance_weight"]), float(a["angle_weight"]))
        ),
    ),
    "pkt": _feature("pkt", lambda a: lambda s, t: M.pkt_loss(s, t, float(a["eps"]))),
    "sp": _feature("sp", lambda a: M.similarity_preserving_loss),
    "crd": _crd,
}
"""Each distillation method of the catalog (:data:`kdistill.methods.METHODS`) and how its term
is made; checked against the catalog when this module is imported."""

assert set(TERMS) == set(METHODS), (
    f"the catalog and the terms disagree: {sorted(set(TERMS) ^ set(METHODS))}"
)
