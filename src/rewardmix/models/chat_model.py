"""Chat generation with a local causal LM (the local teacher/judge backend).

:class:`ChatModel` holds a ``transformers`` causal LM and its tokenizer, renders a conversation with
:func:`rewardmix.data.chat.render_chat` (the tokenizer's own chat template, or ChatML
``<|im_start|>role\n...<|im_end|>`` when it has none), generates, and decodes only the new tokens.
:class:`rewardmix.llm.local.LocalChatClient` wraps it behind the :class:`rewardmix.llm.client.ChatClient`
interface.

Sampling semantics follow the OpenAI API: ``temperature == 0`` is greedy; otherwise plain temperature /
nucleus sampling (the model's own ``top_k`` default is switched off). A ``seed`` makes sampling repeatable
without touching the caller's global RNG state (the RNG is forked around the call).

:meth:`ChatModel.generate_many` answers several conversations in one left-padded batch (on a CPU, a batch of 8
costs little more than one reply: the weights are read once per token for all rows). Each row samples from its
own ``torch.Generator`` seeded with its request's seed, so a reply does not depend on which other requests
shared its batch (up to float rounding of the batched matmuls).

Reference: SPEC §2 ("a local transformers model") and §9 (models load by path or hub id).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from rewardmix.data.chat import render_chat
from rewardmix.models.sampling import seeded_sampling
from rewardmix.models.tokens import stop_token_ids

__all__ = ["BatchItem", "ChatGeneration", "ChatModel"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatGeneration:
    """The result of one :meth:`ChatModel.generate` call.

    Attributes:
        texts: One decoded completion per returned sequence (new tokens only, special tokens skipped, cut at
            the first stop string).
        new_token_ids: The generated token ids per sequence, up to and including the end token if one was
            produced; padding after it removed.
        prompt_tokens: Length of the rendered prompt in tokens.
        finish_reasons: ``"stop"`` (end token or stop string) or ``"length"`` (hit ``max_new_tokens``).
    """

    texts: list[str]
    new_token_ids: list[list[int]]
    prompt_tokens: int
    finish_reasons: list[Literal["stop", "length"]]


class ChatModel:
    """A causal LM + tokenizer ready for chat generation.

    Args:
        model: Any ``transformers`` causal LM.
        tokenizer: Its tokenizer.
        device: Where to run; default: the model's current device.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        device: str | torch.device | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        if device is not None:
            self.model.to(device)
        self.device = next(self.model.parameters()).device

    @classmethod
    def from_pretrained(
        cls,
        model_path_or_id: str | Path,
        *,
        trust_remote_code: bool = False,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        gguf_file: str | None = None,
        revision: str | None = None,
    ) -> ChatModel:
        """Load a model folder or hub id with ``from_pretrained``.

        Args:
            model_path_or_id: Local folder or hub id.
            trust_remote_code: Run code shipped with the checkpoint; off unless the user says so.
            device: Default: ``"cuda"`` when available, else ``"cpu"``.
            dtype: Torch dtype (or ``"auto"``); default: the library's default.
            gguf_file: A GGUF file inside the folder (dequantized on load, SPEC §9).
            revision: Hub revision (branch, tag or commit).
        """
        kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if gguf_file is not None:
            kwargs["gguf_file"] = gguf_file
        if revision is not None:
            kwargs["revision"] = revision
        tokenizer = AutoTokenizer.from_pretrained(model_path_or_id, **kwargs)
        if dtype is not None:
            kwargs["dtype"] = dtype
        if gguf_file is None:
            kwargs["use_safetensors"] = True  # never fall back to pickled .bin weights (torch.load runs code)
        model = AutoModelForCausalLM.from_pretrained(model_path_or_id, **kwargs)
        device = device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        logger.info("loaded chat model %s on %s", model_path_or_id, device)
        return cls(model, tokenizer, device=device)

    @property
    def uses_chat_template(self) -> bool:
        """True when the tokenizer has its own chat template (else ChatML is used)."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    def render(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The prompt text for ``messages``, ending where the assistant's reply begins."""
        # One renderer for the whole package: SFT data and generation prompts must look the same.
        return render_chat(messages, self.tokenizer, add_generation_prompt=True)

    def _end_token_ids(self) -> list[int]:
        # EOS, the checkpoint's generation EOS ids, and ChatML's <|im_end|> when it is one token.
        return stop_token_ids(self.tokenizer, generation_config=self.model.generation_config)

    @torch.inference_mode()
    def generate(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        n: int = 1,
        stop: Sequence[str] = (),
    ) -> ChatGeneration:
        """Generate ``n`` replies to ``messages``.

        Args:
            messages: ``[{"role", "content"}, ...]``.
            max_new_tokens: Generation budget per reply.
            temperature: 0 = greedy (then the ``n`` replies are identical, computed once).
            top_p: Nucleus mass when sampling.
            seed: Seeds sampling; the global RNG state is restored afterwards.
            n: Replies to return.
            stop: Strings at which a decoded reply is cut.

        Returns:
            A :class:`ChatGeneration`.
        """
        input_ids = torch.tensor([self.encode(messages)], device=self.device)
        attention_mask = torch.ones_like(input_ids)
        prompt_len = input_ids.shape[1]
        end_ids = self._end_token_ids()
        pad_id = self.tokenizer.pad_token_id
        pad_id = pad_id if pad_id is not None else (end_ids[0] if end_ids else 0)
        sample = temperature > 0.0
        gen_kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": sample,
            "pad_token_id": pad_id,
            "eos_token_id": end_ids or None,
            "num_return_sequences": n if sample else 1,
        }
        if sample:
            gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        else:
            # Neutralize sampling defaults a checkpoint's generation_config may carry (avoids warnings).
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **gen_kwargs)
        new = out[:, prompt_len:].tolist()
        if not sample:
            new = new * n
        ids_list, texts, reasons = zip(
            *(self._finish(seq, end_ids, stop=stop, max_new_tokens=max_new_tokens) for seq in new),
            strict=True,
        )
        return ChatGeneration(
            texts=list(texts),
            new_token_ids=list(ids_list),
            prompt_tokens=prompt_len,
            finish_reasons=list(reasons),
        )

    def encode(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """Prompt token ids of ``messages``, ending where the assistant's reply begins."""
        # The rendered text already holds every special token the template wants (BOS included).
        return list(self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"])

    def generate_many(
        self,
        items: Sequence[BatchItem],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
    ) -> list[ChatGeneration]:
        """One reply to each conversation, generated together in one left-padded ``generate`` call.

        Args:
            items: The conversations and their seeds.
            max_new_tokens: Generation budget per reply.
            temperature: 0 = greedy; otherwise temperature sampling, row by row with the row's seed.
            top_p: Nucleus mass when sampling.
            stop: Strings at which a decoded reply is cut.

        Returns:
            One :class:`ChatGeneration` (with one text) per item, in order.
        """
        seeds = None
        if temperature > 0.0:
            seeds = [
                it.seed if it.seed is not None else int(torch.randint(0, 2**62, ()).item()) for it in items
            ]
        return self.generate_ids(
            [self.encode(it.messages) for it in items],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seeds=seeds,
            stop=stop,
        )

    @torch.inference_mode()
    def generate_ids(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seeds: Sequence[int] | None = None,
        stop: Sequence[str] = (),
    ) -> list[ChatGeneration]:
        """Replies to already encoded prompts (:meth:`encode`), in one left-padded ``generate`` call.

        Args:
            prompts: Prompt token ids per row.
            max_new_tokens: Generation budget per reply.
            temperature: 0 = greedy; otherwise sampling with one generator per row, seeded by ``seeds``.
            top_k: Keep the k most likely tokens when sampling (0: off).
            top_p: Nucleus mass when sampling.
            seeds: One seed per row; required when ``temperature > 0``.
            stop: Strings at which a decoded reply is cut.

        Returns:
            One :class:`ChatGeneration` (with one text) per prompt, in order.
        """
        if not prompts:
            return []
        end_ids = self._end_token_ids()
        pad_id = self.tokenizer.pad_token_id
        pad_id = pad_id if pad_id is not None else (end_ids[0] if end_ids else 0)
        width = max(len(p) for p in prompts)
        # Left padding: every prompt ends at the same column, where generation starts.
        input_ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], device=self.device)
        attention_mask = torch.tensor(
            [[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device
        )
        gen_kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": False,  # sampling, when asked, happens in the seeded processor (one generator per row)
            "pad_token_id": pad_id,
            "eos_token_id": end_ids or None,
            "temperature": None,
            "top_p": None,
            "top_k": None,
        }
        if temperature > 0.0:
            if seeds is None or len(seeds) != len(prompts):
                raise ValueError("sampling (temperature > 0) needs one seed per prompt")
            gen_kwargs["logits_processor"] = seeded_sampling(
                seeds, temperature=temperature, top_k=top_k, top_p=top_p, device=self.device
            )
        out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **gen_kwargs)
        results = []
        for prompt, seq in zip(prompts, out[:, width:].tolist(), strict=True):
            ids, text, reason = self._finish(seq, end_ids, stop=stop, max_new_tokens=max_new_tokens)
            results.append(
                ChatGeneration(
                    texts=[text], new_token_ids=[ids], prompt_tokens=len(prompt), finish_reasons=[reason]
                )
            )
        return results

    def _finish(
        self, seq: list[int], end_ids: Sequence[int], *, stop: Sequence[str], max_new_tokens: int
    ) -> tuple[list[int], str, Literal["stop", "length"]]:
        """One generated row: ids up to and including the end token, the decoded text cut at a stop string,
        and why it ended."""
        seq = _cut_at_end(seq, set(end_ids))
        stopped = bool(seq) and seq[-1] in end_ids
        text = self.tokenizer.decode(seq, skip_special_tokens=True)
        text, hit_stop = _cut_at_stop(text, stop)
        return seq, text, ("stop" if stopped or hit_stop or len(seq) < max_new_tokens else "length")


class BatchItem(NamedTuple):
    """One conversation of a :meth:`ChatModel.generate_many` call."""

    messages: Sequence[Mapping[str, str]]
    seed: int | None = None
    """Seeds this row's sampler (``None``: drawn from the global RNG)."""


def _cut_at_end(seq: list[int], end_ids: set[int]) -> list[int]:
    """Tokens up to and including the first end token (what follows it is padding)."""
    for i, tok in enumerate(seq):
        if tok in end_ids:
            return seq[: i + 1]
    return seq


def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cuts = [text.find(s) for s in stop if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)
