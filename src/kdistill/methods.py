"""The catalog of distillation methods: names, papers, default weights and what each needs.

Torch-free, so that the config can check ``kd.methods`` and ``kdistill methods`` can list them
without importing torch. The math is in :mod:`kdistill.losses.methods` (pure functions) and
:mod:`kdistill.losses.crd`; the wiring into training in :mod:`kdistill.objectives.terms`.

Default weights: the paper's where it states one for its own loss; otherwise the weight the
comparison tables of CRD (Tian et al. 2020, whose code RepDistiller most later papers reuse) ran
the method with on CIFAR-100. ``source`` says which.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from difflib import get_close_matches
from typing import Any


@dataclass(frozen=True)
class MethodInfo:
    """One distillation method.

    Attributes:
        name: the name used in ``kd.methods`` (and as its loss part in logs).
        title: the method's usual name.
        paper: authors, venue and title.
        weight: the default weight of its loss term (``None`` for ``kd``: ``kd.beta``).
        source: where the default weight comes from.
        needs_features: reads intermediate layers (``pairs``); the teacher then runs online.
        pairs: how many layer pairs it takes: ``"one"`` or ``"one or more"`` (summed).
        args: the method's own settings and their defaults (``kd.methods[i].args``).
        arg_docs: one line per setting.
    """

    name: str
    title: str
    paper: str
    weight: float | None
    source: str
    needs_features: bool
    pairs: str = ""
    args: dict[str, Any] = field(default_factory=dict)
    arg_docs: dict[str, str] = field(default_factory=dict)

    @property
    def reads_cache(self) -> bool:
        """Logit-only methods can use the teacher-output cache."""
        return not self.needs_features


METHODS: dict[str, MethodInfo] = {
    m.name: m
    for m in (
        MethodInfo(
            "kd",
            "Hinton's soft targets",
            "Hinton, Vinyals and Dean 2015, Distilling the Knowledge in a Neural Network",
            None,
            "kd.beta (1 - kd.alpha unless given), times T^2 when kd.scale_by_t2",
            False,
        ),
        MethodInfo(
            "dkd",
            "Decoupled KD",
            "Zhao et al., CVPR 2022, Decoupled Knowledge Distillation",
            1.0,
            "the paper (alpha=1, beta=8, T=4 and a 20-epoch warm-up on CIFAR-100)",
            False,
            args={
                "alpha": 1.0,
                "beta": 8.0,
                "temperature": 4.0,
                "warmup_epochs": 20,
                "standardize": False,
            },
            arg_docs={
                "alpha": "weight of TCKD (target vs non-target)",
                "beta": "weight of NCKD (among non-target classes)",
                "temperature": "temperature of both terms (each times T^2)",
                "warmup_epochs": "the term's weight rises linearly over this many epochs (0: off)",
                "standardize": "standardize both logits first (Sun et al. 2024)",
            },
        ),
        MethodInfo(
            "dist",
            "DIST",
            "Huang et al., NeurIPS 2022, Knowledge Distillation from A Stronger Teacher",
            1.0,
            "the paper (beta=gamma=1, T=1 on ImageNet)",
            False,
            args={"beta": 1.0, "gamma": 1.0, "temperature": 1.0},
            arg_docs={
                "beta": "weight of the inter-class relation (per sample, across classes)",
                "gamma": "weight of the intra-class relation (per class, across the batch)",
                "temperature": "temperature of both relations (each times T^2)",
            },
        ),
        MethodInfo(
            "fitnet",
            "FitNets hints",
            "Romero et al., ICLR 2015, FitNets: Hints for Thin Deep Nets",
            100.0,
            "CRD's comparison (RepDistiller, CIFAR-100)",
            True,
            "one or more",
            args={"hint_epochs": 0},
            arg_docs={
                "hint_epochs": "the first epochs train the student on the hint alone (stage 1 "
                "of the paper); 0 = hint and the other terms together from the start",
            },
        ),
        MethodInfo(
            "at",
            "Attention transfer",
            "Zagoruyko and Komodakis, ICLR 2017, Paying More Attention to Attention",
            1000.0,
            "the paper's beta = 1000 (its code's weight)",
            True,
            "one or more",
            args={"p": 2.0, "resize": False},
            arg_docs={
                "p": "attention map = channel mean of |feature|^p",
                "resize": "average-pool the larger map to the smaller one's size (else "
                "different sizes are an error)",
            },
        ),
        MethodInfo(
            "rkd",
            "Relational KD",
            "Park et al., CVPR 2019, Relational Knowledge Distillation",
            1.0,
            "the paper (distance 25, angle 50 inside the loss)",
            True,
            "one or more",
            args={"distance_weight": 25.0, "angle_weight": 50.0},
            arg_docs={
                "distance_weight": "weight of the distance-wise term",
                "angle_weight": "weight of the angle-wise term",
            },
        ),
        MethodInfo(
            "pkt",
            "Probabilistic knowledge transfer",
            "Passalis and Tefas, ECCV 2018, Learning Deep Representations with Probabilistic "
            "Knowledge Transfer",
            30000.0,
            "CRD's comparison (RepDistiller, CIFAR-100)",
            True,
            "one or more",
            args={"eps": 1e-7},
            arg_docs={"eps": "added inside the logarithm"},
        ),
        MethodInfo(
            "sp",
            "Similarity-preserving KD",
            "Tung and Mori, ICCV 2019, Similarity-Preserving Knowledge Distillation",
            3000.0,
            "the paper's gamma = 3000 (CIFAR-10)",
            True,
            "one or more",
        ),
        MethodInfo(
            "crd",
            "Contrastive representation distillation",
            "Tian et al., ICLR 2020, Contrastive Representation Distillation",
            0.8,
            "the paper (beta = 0.8; 16,384 negatives, NCE temperature 0.07, momentum 0.5)",
            True,
            "one",
            args={"feat_dim": 128, "nce_k": 16384, "nce_t": 0.07, "nce_m": 0.5},
            arg_docs={
                "feat_dim": "size of the embedding heads",
                "nce_k": "negatives per sample, drawn from other classes (at most the training "
                "samples of the other classes)",
                "nce_t": "temperature of the NCE scores",
                "nce_m": "momentum of the memory bank",
            },
        ),
    )
}


def method_info(name: str) -> MethodInfo:
    """The method called ``name``; ``ValueError`` naming the close matches otherwise."""
    if name in METHODS:
        return METHODS[name]
    close = get_close_matches(str(name), METHODS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(
        f"unknown distillation method {name!r}{hint}; known: {', '.join(METHODS)} "
        "(kdistill methods lists them)"
    )


def method_args(info: MethodInfo, given: dict[str, Any], where: str) -> dict[str, Any]:
    """The method's settings: its defaults updated with ``given``; unknown keys and values of
    the wrong type are errors naming ``where``."""
    unknown = sorted(set(given) - set(info.args))
    if unknown:
        valid = ", ".join(info.args) or "none"
        raise ValueError(
            f"{where}: unknown setting(s) {', '.join(unknown)} for {info.name}; valid: {valid}"
        )
    out = dict(info.args)
    for key, value in given.items():
        default = info.args[key]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
            value = float(value) if ok else value
        if not ok:
            raise ValueError(
                f"{where}.{key} must be {type(default).__name__} >= 0 like its default "
                f"{default!r}, got {value!r}"
            )
        out[key] = value
    return out
