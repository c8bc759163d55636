"""A local ``transformers`` model as a teacher or judge, behind the :class:`ChatClient` interface.

The heavy lifting (loading, chat template, generation) lives in :mod:`rewardmix.models.chat_model`, the only
package that imports ``transformers``. One model instance never runs two ``generate`` calls at once. Instead,
requests that arrive together (``run_batch(..., concurrency=k)`` keeps ``k`` in flight) are answered in one
batch of at most ``max_batch_size``: the first caller waits up to ``batch_wait_s`` for others, then generates
for all of them with :meth:`ChatModel.generate_many` while the rest wait for their answers. Each request
still samples with its own seed, so its reply does not depend on its batch mates (up to float rounding).
Requests with ``n > 1`` are answered alone.

Reference: SPEC §2 ("a local transformers model").
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rewardmix.llm.client import ChatRequest, ChatResponse
from rewardmix.models.chat_model import BatchItem, ChatGeneration, ChatModel
from rewardmix.redact import get_redacting_logger

__all__ = ["LocalChatClient"]

logger = get_redacting_logger(__name__)


class LocalChatClient:
    """Answers chat requests with a local causal LM.

    Args:
        model_path_or_id: Model folder or hub id; also the ``model`` name filled into requests (and so part of
            their cache keys).
        trust_remote_code: Allow code shipped with the checkpoint (off unless asked for).
        device: ``"cpu"``, ``"cuda"``, ...; default: CUDA when available.
        dtype: Torch dtype or ``"auto"``.
        gguf_file: GGUF file inside the folder (SPEC §9).
        chat_model: An already loaded :class:`ChatModel` (then nothing is loaded; tests, or a policy being
            trained used as judge).
        max_batch_size: Most requests generated together (1: one at a time).
        batch_wait_s: How long the first request of a batch waits for others to join it.
    """

    def __init__(
        self,
        model_path_or_id: str | Path,
        *,
        trust_remote_code: bool = False,
        device: str | None = None,
        dtype: Any = None,
        gguf_file: str | None = None,
        chat_model: ChatModel | None = None,
        max_batch_size: int = 1,
        batch_wait_s: float = 0.05,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = str(model_path_or_id)
        self.chat_model = chat_model or ChatModel.from_pretrained(
            model_path_or_id,
            trust_remote_code=trust_remote_code,
            device=device,
            dtype=dtype,
            gguf_file=gguf_file,
        )
        self._lock = threading.Lock()  # one generate at a time
        self._cond = threading.Condition()  # guards the queue and the leader flag
        self._queue: list[_Pending] = []
        self._leader = False
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.calls = 0
        self.batches = 0

    def __repr__(self) -> str:
        return f"LocalChatClient({self.model!r})"

    def complete(self, request: ChatRequest) -> ChatResponse:
        """Generate the reply; ``request.model`` must be this client's model (or ``None``).

        Raises:
            ValueError: The request names another model (a cache key would then describe the wrong model).
        """
        request = request.with_model(self.model)
        if request.model != self.model:
            raise ValueError(f"request is for model {request.model!r} but this client serves {self.model!r}")
        if self.max_batch_size == 1 or request.n > 1:
            with self._lock:
                self.calls += 1
                self.batches += 1
                gen = self.chat_model.generate(
                    request.messages,
                    max_new_tokens=request.max_tokens,
                    temperature=request.temperature,
                    top_p=request.top_p,
                    seed=request.seed,
                    n=request.n,
                    stop=request.stop,
                )
            return self._response(gen)
        return self._complete_batched(request)

    def _complete_batched(self, request: ChatRequest) -> ChatResponse:
        # Leader/follower: the caller that finds no leader gathers a batch, generates it and hands out the
        # answers; every other caller waits until its own answer (or error) is there, or leads the next batch.
        mine = _Pending(request)
        with self._cond:
            self._queue.append(mine)
            self._cond.notify_all()
            while not mine.done:
                if self._leader:
                    self._cond.wait()
                    continue
                self._leader = True
                deadline = time.monotonic() + self.batch_wait_s
                while len(self._queue) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
                batch = self._take_batch()
                self._cond.release()
                try:
                    self._run(batch)
                finally:
                    self._cond.acquire()
                    self._leader = False
                    self._cond.notify_all()
        if mine.error is not None:
            raise mine.error
        assert mine.generation is not None
        return self._response(mine.generation)

    def _take_batch(self) -> list[_Pending]:
        """Up to ``max_batch_size`` queued requests that share the first one's generation settings."""
        first = self._queue[0]
        batch = [p for p in self._queue if p.settings == first.settings][: self.max_batch_size]
        taken = {id(p) for p in batch}
        self._queue = [p for p in self._queue if id(p) not in taken]
        return batch

    def _run(self, batch: list[_Pending]) -> None:
        req = batch[0].request
        try:
            with self._lock:
                self.calls += len(batch)
                self.batches += 1
                gens = self.chat_model.generate_many(
                    [BatchItem(p.request.messages, p.request.seed) for p in batch],
                    max_new_tokens=req.max_tokens,
                    temperature=req.temperature,
                    top_p=req.top_p,
                    stop=req.stop,
                )
            for p, gen in zip(batch, gens, strict=True):
                p.generation = gen
        except Exception as e:  # every waiting caller gets the error, as it would have alone
            for p in batch:
                p.error = e
        for p in batch:
            p.done = True

    def _response(self, gen: ChatGeneration) -> ChatResponse:
        usage = {
            "prompt_tokens": gen.prompt_tokens,
            "completion_tokens": sum(len(ids) for ids in gen.new_token_ids),
        }
        meta = {"model": self.model, "finish_reasons": list(gen.finish_reasons), "backend": "local"}
        return ChatResponse(text=gen.texts[0], choices=tuple(gen.texts), usage=usage, meta=meta)


@dataclass
class _Pending:
    """A request waiting for its batch."""

    request: ChatRequest
    generation: ChatGeneration | None = None
    error: BaseException | None = None
    done: bool = False

    @property
    def settings(self) -> tuple:
        r = self.request
        return (r.max_tokens, r.temperature, r.top_p, r.stop)
