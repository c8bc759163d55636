"""Rollouts through vLLM (``generation.backend: vllm``): an engine holding a copy of the policy, synced each update.

The PPO stage normally samples with ``model.generate`` on the policy itself. On a GPU, vLLM generates much
faster (paged KV cache, continuous batching, CUDA graphs). :class:`VllmRollout` keeps a vLLM ``LLM`` engine
next to the training model:

1. it is built from the base model's folder (the same weights the policy starts from) and immediately given
   the policy's current weights;
2. after every PPO update the stage calls :meth:`VllmRollout.sync_weights`: the policy's LoRA role is merged
   out of place (``W + scale * B A`` computed per layer, the base left untouched, so the reference, which is
   the base with adapters disabled, stays exact) and the merged tensors are loaded into the engine's model
   with its ``load_weights`` (vLLM maps Hugging Face names itself, e.g. ``q_proj``/``k_proj``/``v_proj`` into
   its fused ``qkv_proj``); the prefix cache is reset, since cached keys/values belong to the old weights;
3. :meth:`VllmRollout.generate` samples one response per prompt from token ids with ``SamplingParams``
   matching the stage's generation settings (temperature, top-k, top-p, max new tokens, the stop token ids,
   one seed per response) and returns the response token ids, each ending with its stop token when it has one,
   as the Hugging Face path's rows do.

vLLM API used (the way TRL's colocate mode does it, ``trl/generation/vllm_generation.py`` ``sync_weights``):
``LLM(model=..., seed=..., gpu_memory_utilization=...)``, ``LLM.generate(prompts, sampling_params,
use_tqdm=False)`` with ``{"prompt_token_ids": ids}`` prompts, the in-process model at
``llm.llm_engine.model_executor.driver_worker.model_runner.model`` and its ``load_weights(iterable of
(name, tensor))``, and ``LLM.reset_prefix_cache()``. The in-process model exists when the engine core runs in
this process: vLLM V1 does that with ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, which this module sets (unless
already set) before building the engine (``vllm/v1/engine/llm_engine.py``: ``if not multiprocess_mode:
self.model_executor = self.engine_core.engine_core.model_executor``). When it is not reachable (a
multi-process engine), weights go through ``LLM.apply_model(fn)`` (vLLM >= 0.8; ``collective_rpc`` under
the hood; a callable crosses processes only with ``VLLM_ALLOW_INSECURE_SERIALIZATION=1``).

Importing this module imports neither vLLM nor transformers (only ``torch``); vLLM is imported when a
:class:`VllmRollout` is built, so CPU runs never need it. Install it in a separate environment with a CUDA
GPU (the ``vllm`` extra): vLLM pins its own torch build.

Not checked on a GPU yet: the tests drive this adapter with a fake ``vllm`` module (see
``tests/models/test_vllm_rollout.py``).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch

__all__ = ["VllmRollout", "VllmUnavailableError", "merged_policy_weights", "vllm_available"]

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "install vLLM in a separate environment with a CUDA GPU (pip install 'rewardmix[vllm]'), "
    "or set generation.backend: hf"
)


class VllmUnavailableError(ImportError):
    """``generation.backend: vllm`` was asked for where vLLM is not installed."""


def vllm_available() -> bool:
    """Whether the ``vllm`` package can be imported here (checked without importing it)."""
    return importlib.util.find_spec("vllm") is not None


def merged_policy_weights(model: torch.nn.Module, role: str | None) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights under the base model's own parameter names, LoRA role ``role`` merged in.

    For a ``PeftModel`` every LoRA-wrapped layer yields ``base_weight + delta`` with ``delta = scale * B A``
    (peft's ``get_delta_weight``), computed out of place: the shared base and the other roles are untouched.
    Adapter tensors themselves are not yielded. For a plain model (full fine-tuning, ``role`` None) its
    parameters are yielded as they are. Tied weights appear once (``named_parameters`` deduplicates them).

    Args:
        model: The policy: a ``PeftModel`` carrying ``role``, or a plain causal LM.
        role: The LoRA role to merge; None for a plain model.

    Yields:
        ``(name, tensor)`` pairs, names as in the base model's ``state_dict`` (``model.layers.0.mlp.up_proj.weight``).
    """
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    if not isinstance(model, PeftModel):
        with torch.no_grad():
            for name, param in model.named_parameters():
                yield name, param.detach()
        return
    if role is None or role not in model.peft_config:
        raise KeyError(f"the policy has no LoRA role {role!r}; roles: {sorted(model.peft_config)}")
    base = model.get_base_model()
    lora_layers = {name: module for name, module in base.named_modules() if isinstance(module, LoraLayer)}
    with torch.no_grad():
        for name, param in base.named_parameters():
            owner, _, leaf = name.rpartition(".")
            if ".lora_" in f".{name}":  # lora_A / lora_B / lora_embedding_* / lora_magnitude_vector
                continue
            if owner.endswith(".base_layer") and owner[: -len(".base_layer")] in lora_layers:
                layer_name = owner[: -len(".base_layer")]
                layer = lora_layers[layer_name]
                tensor = param.detach()
                if leaf == "weight" and role in getattr(layer, "lora_A", {}):
                    tensor = tensor + layer.get_delta_weight(role).to(tensor.dtype)  # W + (alpha / r) B A
                yield f"{layer_name}.{leaf}", tensor
            else:
                yield name, param.detach()


class VllmRollout:
    """A vLLM engine that generates the PPO rollouts with the policy's current weights.

    Args:
        model_path: Folder (or hub id) of the base model the policy starts from.
        seed: Engine seed.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` or ``"auto"``.
        gpu_memory_utilization: Fraction of GPU memory the engine may take (weights + KV cache); the training
            model shares the GPU.
        max_model_len: Longest prompt + response the engine must handle (None: the model's maximum).
        llm_kwargs: Further ``vllm.LLM`` keyword arguments.

    Raises:
        VllmUnavailableError: vLLM is not installed.
    """

    def __init__(
        self,
        model_path: str,
        *,
        seed: int = 0,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.3,
        max_model_len: int | None = None,
        llm_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if not vllm_available():
            raise VllmUnavailableError(f"generation.backend: vllm needs the vllm package: {INSTALL_HINT}")
        # The engine core in this process, so that its model is reachable for load_weights (see module doc).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self._vllm = importlib.import_module("vllm")
        kwargs: dict[str, Any] = {
            "model": model_path,
            "tokenizer": model_path,
            "seed": seed,
            "dtype": dtype,
            "gpu_memory_utilization": gpu_memory_utilization,
        }
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        kwargs.update(llm_kwargs or {})
        self.llm = self._vllm.LLM(**kwargs)
        self.syncs = 0
        """How many times weights were loaded into the engine."""
        logger.info(
            "vLLM rollout engine for %s (%s)", model_path, {k: v for k, v in kwargs.items() if k != "model"}
        )

    def _engine_model(self) -> Any | None:
        """The engine's model in this process, or None when the engine runs in other processes."""
        try:
            return self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        except AttributeError:
            return None

    def sync_weights(self, policy: torch.nn.Module, role: str | None) -> int:
        """Load the policy's current weights (role ``role`` merged) into the engine; returns the tensor count.

        Called once after the engine is built and after every PPO update (and after resuming from a
        checkpoint), so every rollout comes from the policy being trained.
        """
        weights = list(merged_policy_weights(policy, role))
        model = self._engine_model()
        if model is not None:
            model.load_weights(weights)
        else:
            self.llm.apply_model(lambda m: m.load_weights(weights))
        reset = getattr(self.llm, "reset_prefix_cache", None)
        if reset is not None:  # cached keys/values were computed with the old weights
            reset()
        self.syncs += 1
        logger.debug("synced %d policy tensors into the vLLM engine (sync %d)", len(weights), self.syncs)
        return len(weights)

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        seeds: Sequence[int],
        max_new_tokens: int,
        temperature: float,
        top_k: int,
        top_p: float,
        stop_ids: Sequence[int],
    ) -> list[list[int]]:
        """Sample one response per prompt; returns each response's token ids.

        A response that stopped on a stop token ends with it (as the Hugging Face path's rows do, where the
        response mask keeps the stop token); one cut at ``max_new_tokens`` has that many tokens.

        Args:
            prompt_ids: Token ids of each prompt (no padding).
            seeds: One sampling seed per prompt.
            max_new_tokens: Longest response.
            temperature: Sampling temperature.
            top_k: Keep the k most likely tokens (0: off).
            top_p: Nucleus mass (1.0: off).
            stop_ids: Token ids that end a response (EOS, ``<|im_end|>``).
        """
        if len(seeds) != len(prompt_ids):
            raise ValueError(f"{len(seeds)} seeds for {len(prompt_ids)} prompts")
        params = [
            self._vllm.SamplingParams(
                n=1,
                temperature=temperature,
                top_k=top_k if top_k > 0 else -1,  # -1 = off in every vLLM version (0 was refused before 0.9)
                top_p=top_p,
                repetition_penalty=1.0,
                max_tokens=max_new_tokens,
                stop_token_ids=list(stop_ids),
                seed=int(seed),
                detokenize=False,  # the stage decodes the ids itself
            )
            for seed in seeds
        ]
        prompts = [{"prompt_token_ids": list(ids)} for ids in prompt_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        responses = []
        for output in outputs:
            completion = output.outputs[0]
            ids = list(completion.token_ids)
            # A response that stopped on a stop token keeps it, as with Hugging Face (its log-prob is learned).
            if completion.finish_reason == "stop" and stop_ids and (not ids or ids[-1] not in stop_ids):
                stop = completion.stop_reason if isinstance(completion.stop_reason, int) else None
                ids.append(stop if stop is not None else stop_ids[0])
            responses.append(ids[:max_new_tokens] if len(ids) > max_new_tokens else ids)
        return responses
