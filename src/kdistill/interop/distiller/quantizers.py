"""Distiller's quantization-aware training quantizer as kdistill's quantization policy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kdistill.interop.distiller.errors import DistillerError
from kdistill.interop.distiller.names import override_key
from kdistill.interop.distiller.steps import Schedule, Steps
from kdistill.interop.distiller.values import only
from kdistill.policies import QuantizationPolicy

CLASSES = ("QuantAwareTrainRangeLinearQuantizer", "QuantAwareTrainRangeLinearQuantization")
# kdistill's first spelling of Distiller's class, kept so that schedules written for it still load.
_OLD_SPELLING = "QuantAwareTrainRangeLinearQuantization"
REFUSED = {
    "DorefaQuantizer": "DoReFa (tanh-normalized weights, clipped activations)",
    "PACTQuantizer": "PACT (learned activation clipping)",
    "WRPNQuantizer": "WRPN (wide reduced-precision networks)",
    "PostTrainLinearQuantizer": "post-training quantization",
}


def translate(
    schedule: Schedule, name: str, spec: dict[str, Any], steps: Steps, args: Mapping[str, Any]
) -> None:
    where, cls = f"{schedule.where}: quantizers.{name}", spec["class"]
    if args:
        raise DistillerError(
            f"{where}: policy args {sorted(args)} are not supported for quantizers"
        )
    if cls == _OLD_SPELLING:
        schedule.note(
            f"quantizers.{name}: {cls} is read as Distiller's QuantAwareTrainRangeLinearQuantizer "
            "(the class's name in Distiller; the old spelling is kept as an alias)"
        )
    ignored = {"bits_bias", "ema_decay", "quantize_inputs", "num_bits_inputs", "clip_acts"}
    only(spec, {"bits_activations", "bits_weights", "mode", "per_channel_wts", "overrides"}
          | ignored, where, cls)  # fmt: skip
    policy: dict[str, Any] = {"kind": "quantization", "starting_epoch": steps.start}
    for key, ours in (("bits_weights", "weight_bits"), ("bits_activations", "activation_bits")):
        policy[ours] = bits(spec.get(key), f"{where}: {key}")
        if policy[ours] is None:
            raise DistillerError(
                f"{where}: {key} is {spec.get(key)!r}; kdistill's quantization-aware training "
                "quantizes weights and activations (and converts to int8): give both "
                "bits_weights and bits_activations in 2..8 (overrides keep single layers in float)"
            )
    weight_mode, act_mode = _modes(spec.get("mode", "SYMMETRIC"), where)
    policy["activation_symmetric"] = act_mode == "SYMMETRIC"
    policy["weight_per_channel"] = bool(spec.get("per_channel_wts", False))
    if weight_mode != "SYMMETRIC":
        schedule.note(
            f"quantizers.{name}: weights are quantized SYMMETRIC, not {weight_mode}: the int8 "
            "kernels kdistill trains for take symmetric weights (activations follow the mode)"
        )
    if act_mode == "ASYMMETRIC_SIGNED":
        schedule.note(
            f"quantizers.{name}: ASYMMETRIC_SIGNED activations are quantized as asymmetric "
            "unsigned (the same grid shifted by the zero point)"
        )
    overrides = spec.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise DistillerError(f"{where}: overrides must map layer names to settings")
    policy["overrides"] = {
        override_key(str(k)): _override(v, f"{where}: overrides[{k}]") for k, v in overrides.items()
    }
    present = sorted(k for k in ignored if k in spec)
    if present:
        schedule.note(
            f"quantizers.{name}: {', '.join(present)} ignored (kdistill keeps biases in int32, "
            "tracks ranges with its own observers and leaves the network's input in float)"
        )
    if steps.end < schedule.epochs:
        schedule.note(
            f"quantizers.{name}: quantization-aware training runs from epoch {steps.start} to the "
            f"end of training (the schedule's ending_epoch {steps.end} is not used)"
        )
    schedule.policies.append(QuantizationPolicy(**policy))


def bits(value: Any, where: str) -> int | None:
    if value is None or value == 32:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 8:
        raise DistillerError(
            f"{where}: {value!r} bits; kdistill trains 2..8-bit quantization (null or 32 = float)"
        )
    return value


def _modes(mode: Any, where: str) -> tuple[str, str]:
    valid = ("SYMMETRIC", "ASYMMETRIC_UNSIGNED", "ASYMMETRIC_SIGNED")
    if isinstance(mode, dict):
        unknown = sorted(set(mode) - {"activations", "weights"})
        if unknown:
            raise DistillerError(f"{where}: mode keys {unknown}; valid: activations, weights")
        weights, acts = mode.get("weights", "SYMMETRIC"), mode.get("activations", "SYMMETRIC")
    else:
        weights = acts = mode
    for m in (weights, acts):
        if m not in valid:
            raise DistillerError(f"{where}: mode {m!r}; valid: {', '.join(valid)}")
    return weights, acts


def _override(value: Any, where: str) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        raise DistillerError(f"{where}: expected a mapping of bits_weights / bits_activations")
    unknown = sorted(set(value) - {"bits_weights", "bits_activations", "bits_bias"})
    if unknown:
        raise DistillerError(
            f"{where}: {', '.join(unknown)} not supported in overrides; supported: bits_weights, "
            "bits_activations (bits_bias is ignored)"
        )
    weights = bits(value.get("bits_weights"), f"{where}.bits_weights")
    acts = bits(value.get("bits_activations"), f"{where}.bits_activations")
    if weights is None and acts is None:
        return None  # the layer stays in float
    if weights is None or acts is None:
        raise DistillerError(
            f"{where}: kdistill quantizes a layer's weights and activations together or keeps "
            "both in float; give both bits or neither"
        )
    return {"weight_bits": weights, "activation_bits": acts}
