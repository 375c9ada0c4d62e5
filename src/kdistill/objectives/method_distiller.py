"""``MethodDistiller``: the labels' cross-entropy plus any weighted set of distillation methods.

``loss = label_weight * CE(y, z_s) + sum_m weight_m(epoch) * term_m``, where each term is one
method (:mod:`kdistill.objectives.terms`): Hinton's soft targets, DKD, DIST on the logits;
FitNets, AT, RKD, PKT, SP, CRD on tapped layers. Layers are captured with forward hooks during
the one forward pass of each network (:mod:`kdistill.objectives.taps`); the teacher's come from
the frozen teacher's own forward, under its eval mode, BatchNorm policy and precision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kdistill.losses.functional import gradient_norms, student_cross_entropy
from kdistill.objectives.base import StudentObjective
from kdistill.objectives.taps import FeatureTaps, describe_modules, module_shapes
from kdistill.objectives.terms import Term, TermInputs
from kdistill.teachers.frozen import FrozenTeacher, as_teacher
from kdistill.types import DistillerOutput, LossOutput, StudentOutput, TeacherOutput, logits_of
from kdistill.validation import EpochWindow

_HALF = (torch.float16, torch.bfloat16)


def check_layer_names(
    model: nn.Module, names: Sequence[str], sample: Tensor, role: str
) -> dict[str, tuple[int, ...]]:
    """The output shapes of the named layers of ``model`` for ``sample`` (one sample), tapped
    as training taps them (so an exported QAT student is probed through its graph); an
    unknown name is an error listing every layer with its output shape."""
    if not names:
        return {}
    captured: dict[str, Tensor] = {}
    taps = FeatureTaps(names, role, clone=False)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), taps.capture(model) as captured:
            model(sample)
    except ValueError:  # a name the model does not have
        captured = {}
    finally:
        model.train(was_training)
    missing = [n for n in names if n not in captured]
    if missing:
        shapes = module_shapes(model, sample)
        raise ValueError(
            f"the {role} has no layer {', '.join(map(repr, missing))} (or it gives no tensor); "
            f"its layers and their outputs for one sample:\n{describe_modules(shapes)}"
        )
    return {n: tuple(captured[n].shape) for n in names}


def probe_layers(
    student: nn.Module,
    teacher: nn.Module,
    student_layers: Sequence[str],
    teacher_layers: Sequence[str],
    sample: Tensor,
) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """The output shapes of the named student and teacher layers for one sample, as each
    network sees it (the teacher after its input transform); unknown names are errors that
    list each network's layers with their shapes."""
    student_shapes = check_layer_names(student, student_layers, sample, "student")
    teacher_shapes: dict[str, tuple[int, ...]] = {}
    if teacher_layers:
        frozen = as_teacher(teacher)
        if not isinstance(frozen, FrozenTeacher):
            raise ValueError(
                f"feature methods read the teacher's layers, which needs one live teacher "
                f"network, not a {type(frozen).__name__}"
            )
        x = frozen.input_transform(sample) if frozen.input_transform is not None else sample
        teacher_shapes = check_layer_names(frozen.model, teacher_layers, x, "teacher")
    return student_shapes, teacher_shapes


class MethodDistiller(StudentObjective):
    """A student trained on labels and on any weighted combination of distillation methods:
    kdistill's one distillation objective (:class:`~kdistill.Distiller` is Hinton's loss built
    on it).

    Args:
        student: the network being trained.
        teacher: the trained teacher (frozen automatically), or a teacher object. Methods that
            read layers need a single live teacher (a network or :class:`FrozenTeacher`);
            logit methods also work with ensembles and the teacher-output cache. With a term
            that trains the teacher (:class:`~kdistill.objectives.terms.TeacherLabelsTerm`,
            joint training) it must be the plain network, which then trains with the student.
        terms: the methods' terms (:func:`kdistill.objectives.terms.build_term`); each part
            name once.
        label_weight: weight of the labels' cross-entropy (the ``"student"`` part; ``kd.alpha``).
        ignore_index: label of unlabelled samples.
        kd_start_epoch, kd_end_epoch: outside these epochs the loss is the labels' cross-entropy
            alone (a term's exclusive stage, FitNets' hints, still runs in its own epochs).

    ``parameters()`` yields the student's and the terms' (adapters, embedding heads);
    ``state_dict()`` is the student's alone; the terms' state goes in :meth:`extra_state`.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        terms: Sequence[Term],
        *,
        label_weight: float,
        ignore_index: int = -100,
        kd_start_epoch: int = 0,
        kd_end_epoch: int | None = None,
    ) -> None:
        super().__init__()
        parts = [t.part for t in terms]
        if not terms or len(set(parts)) != len(parts):
            raise ValueError(f"give each distillation method once, got {parts or 'none'}")
        if label_weight < 0:
            raise ValueError(f"label_weight must be >= 0, got {label_weight}")
        try:
            self.window = EpochWindow(kd_start_epoch, kd_end_epoch)
        except ValueError as e:
            raise ValueError(f"kd_start_epoch / kd_end_epoch: {e}") from None
        self.student = student
        self.joint = any(t.trains_teacher for t in terms)
        if self.joint:
            if getattr(teacher, "is_teacher", False) or not isinstance(teacher, nn.Module):
                raise ValueError(
                    "joint training (a term that trains the teacher) needs the teacher network "
                    f"itself, not a {type(teacher).__name__}"
                )
            self.teacher = teacher
        else:
            self.teacher = as_teacher(teacher)
        self.terms = nn.ModuleList(terms)
        self.label_weight = float(label_weight)
        self.ignore_index = int(ignore_index)
        self.epoch = 0
        student_layers = [s for t in terms for s, _ in t.pairs]
        teacher_layers = [tl for t in terms for _, tl in t.pairs]
        if teacher_layers and not isinstance(self.teacher, FrozenTeacher):
            raise ValueError(
                f"{', '.join(t.part for t in terms if t.needs_features)} read the teacher's "
                f"layers, which needs one live teacher network, not a {type(self.teacher).__name__} "
                "(an ensemble or the teacher-output cache gives outputs only)"
            )
        self.student_taps = FeatureTaps(student_layers, "student", clone=True)
        self.teacher_taps = FeatureTaps(teacher_layers, "teacher", clone=False)

    def read_teacher_from(self, source: nn.Module) -> None:
        """Take the teacher's outputs from ``source`` from now on (the teacher-output cache in
        place of the live teacher, once the run has prepared it). Methods that read the
        teacher's layers need the live teacher."""
        if self.teacher_taps.names or self.joint:
            raise ValueError(
                "methods that read the teacher's layers, and joint training, need the live "
                f"teacher, not a {type(source).__name__}"
            )
        self.teacher = as_teacher(source)

    # -- the schedule -----------------------------------------------------------------------

    def _active_terms(self) -> list[Term]:
        exclusive = [t for t in self.terms if t.exclusive_at(self.epoch)]  # type: ignore[attr-defined]
        if exclusive:
            return exclusive
        return list(self.terms) if self.kd_active else []  # type: ignore[arg-type]

    # -- the loss ---------------------------------------------------------------------------

    def _teacher(
        self, inputs: Tensor, sample_ids: Tensor | None, views: Tensor | None
    ) -> tuple[TeacherOutput, dict[str, Tensor]]:
        if self.joint:  # the plain network, with gradient, training on its own labels
            return TeacherOutput(logits=logits_of(self.teacher(inputs))), {}
        if not self.teacher_taps.names:
            return self.teacher(inputs, sample_ids=sample_ids, views=views), {}
        with self.teacher_taps.capture(self.teacher.model) as raw:  # type: ignore[union-attr]
            out = self.teacher(inputs, sample_ids=sample_ids, views=views)
        # Copies made outside inference mode are ordinary tensors; half precision -> float32.
        return out, {
            k: v.to(torch.float32 if v.dtype in _HALF else v.dtype, copy=True)
            for k, v in raw.items()
        }

    def forward(
        self,
        inputs: Tensor,
        targets: Tensor | None = None,
        *,
        sample_ids: Tensor | None = None,
        views: Tensor | None = None,
    ) -> DistillerOutput:
        active = self._active_terms()
        with self.student_taps.capture(self.student) as student_features:
            logits = logits_of(self.student(inputs))
        missing = [n for n in self.student_taps.names if n not in student_features]
        if missing:
            raise ValueError(
                f"the student's layer(s) {', '.join(missing)} gave no output in its forward pass "
                "(a module that forward does not call); tap another layer"
            )
        exclusive = bool(active) and active[0].exclusive_at(self.epoch)
        parts: dict[str, Tensor] = {}
        weights: dict[str, float] = {}
        if targets is not None:
            parts["student"] = student_cross_entropy(
                logits, targets, ignore_index=self.ignore_index
            )
            weights["student"] = 0.0 if exclusive else (self.label_weight if active else 1.0)
        elif not active or self.label_weight > 0:
            raise ValueError("the labels' cross-entropy needs targets")
        teacher_out = None
        if active:
            teacher_out, teacher_features = self._teacher(inputs, sample_ids, views)
            x = TermInputs(
                logits, teacher_out, targets, student_features, teacher_features, sample_ids,
                self.epoch,
            )  # fmt: skip
            for term in active:
                parts[term.part] = term(x)
                weights[term.part] = term.weight_at(self.epoch)
        total = sum(parts[k] * w for k, w in weights.items() if w != 0.0)
        if not isinstance(total, Tensor):
            total = logits.sum() * 0.0
        if self.joint and teacher_out is not None:  # what callers see carries no history
            teacher_out = teacher_out.detach()
        return DistillerOutput(
            StudentOutput(logits),
            LossOutput(total=total, parts=parts, weights=weights),
            teacher_out,
        )

    def gradient_ratio(
        self,
        inputs: Tensor,
        targets: Tensor,
        *,
        sample_ids: Tensor | None = None,
        views: Tensor | None = None,
    ) -> float | None:
        """How hard the logit methods (with the labels' term) pull on the student's logits
        compared with plain cross-entropy, on this batch: how much harder distillation pulls
        than the labels alone (a learning rate tuned without a teacher assumes about 1).

        The student runs in eval mode without gradients (nothing in it changes and no random
        number is drawn). Feature methods act on inner layers and are left out; ``None``
        without logit methods, in joint training, or when cross-entropy has no gradient."""
        logit_terms = [
            t
            for t in self.terms
            if not t.needs_features and not t.trains_teacher  # type: ignore[attr-defined]
        ]
        if not logit_terms or self.joint:
            return None
        logits = self.probe_logits(inputs)
        teacher_out = self.teacher(inputs, sample_ids=sample_ids, views=views)
        x = TermInputs(logits, teacher_out, targets, {}, {}, sample_ids, self.epoch)
        ce = student_cross_entropy(logits, targets, ignore_index=self.ignore_index)
        total = self.label_weight * ce
        for term in logit_terms:
            total = total + term.weight_at(self.epoch) * term(x)
        norms = gradient_norms({"total": total, "labels": ce}, logits)
        return None if norms["labels"] <= 0.0 else norms["total"] / norms["labels"]

    # -- what is trained and saved ----------------------------------------------------------

    def trained_besides_student(self) -> dict[str, nn.Module]:
        """The terms' adapters and embedding heads, and the teacher in joint training."""
        return {"terms": self.terms, **({"teacher": self.teacher} if self.joint else {})}

    def extra_state(self) -> dict[str, Any]:
        """The terms' trained state (adapters, embedding heads, CRD's memory) and a jointly
        trained teacher's weights."""
        state: dict[str, Any] = {"terms": self.terms.state_dict()}
        if self.joint:
            state["teacher"] = self.teacher.state_dict()
        return state

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        # checkpoints of Hinton's loss alone written before it became a term hold no "terms"
        # (its term has no state)
        if "terms" in state or any(self.terms.state_dict()):
            self.terms.load_state_dict(state["terms"])
        if self.joint:
            self.teacher.load_state_dict(state["teacher"])
