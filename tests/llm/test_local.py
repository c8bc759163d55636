"""LocalChatClient on a tiny random Llama saved to disk: deterministic greedy output, new tokens only."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rewardmix.llm.cache import CachedClient, DiskCache
from rewardmix.llm.client import ChatRequest
from rewardmix.llm.local import LocalChatClient
from rewardmix.models.chat_model import ChatModel
from rewardmix.models.tiny import TINY_CHAT_TEMPLATE, build_tiny_tokenizer

MESSAGES = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the answer?"})


def tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> str:
    """A tiny random Llama + tiny tokenizer (own chat template), saved like any HF model folder."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = build_tiny_tokenizer(TINY_CHAT_TEMPLATE)
    tiny_llama(len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def client(saved_model) -> LocalChatClient:
    return LocalChatClient(saved_model, device="cpu")


def manual_greedy(model, input_ids: list[int], steps: int, end_ids: set[int]) -> list[int]:
    """Reference: argmax of the full forward pass, one token at a time, no cache, no generate()."""
    ids = list(input_ids)
    new: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([ids])).logits[0, -1]
            nxt = int(torch.argmax(logits))
            new.append(nxt)
            ids.append(nxt)
            if nxt in end_ids:
                break
    return new


def test_greedy_output_is_deterministic_and_only_new_tokens(client):
    req = ChatRequest(messages=MESSAGES, max_tokens=12)
    first = client.complete(req)
    second = client.complete(req)
    assert first.text == second.text
    assert first.meta == {"model": client.model, "finish_reasons": ["length"], "backend": "local"}

    cm = client.chat_model
    prompt = cm.render(MESSAGES)
    # The tokenizer's own template was used (not ChatML), ending with the assistant header.
    assert prompt == "### system:\nBe brief.<eos>\n### user:\nWhat is the answer?<eos>\n### assistant:\n"
    prompt_ids = cm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    expected_new = manual_greedy(cm.model, prompt_ids, 12, {1})
    gen = cm.generate(MESSAGES, max_new_tokens=12)
    assert gen.new_token_ids == [expected_new]
    assert len(expected_new) == 12  # this seed never hits <eos> within 12 tokens, so the check is not vacuous
    assert first.text == cm.tokenizer.decode(expected_new, skip_special_tokens=True)
    assert gen.prompt_tokens == len(prompt_ids) == first.usage["prompt_tokens"]
    assert first.usage["completion_tokens"] == 12
    # Decoding prompt + new tokens gives back the prompt followed by exactly the returned text.
    assert "What is the answer?" not in first.text
    assert cm.tokenizer.decode(prompt_ids + expected_new) == prompt + first.text


def test_chatml_fallback_without_a_template(tmp_path):
    tok = build_tiny_tokenizer()  # no chat template
    model = tiny_llama(len(tok), seed=1)
    cm = ChatModel(model, tok, device="cpu")
    assert not cm.uses_chat_template
    assert cm.render(MESSAGES) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is the answer?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # <|im_end|> (id 4) ends a ChatML reply, besides <eos> (id 1).
    assert cm._end_token_ids() == [1, 4]
    client = LocalChatClient("in-memory-tiny", chat_model=cm)
    resp = client.complete(ChatRequest(messages=MESSAGES, max_tokens=6))
    assert resp.text == client.complete(ChatRequest(messages=MESSAGES, max_tokens=6)).text


def test_seeded_sampling_is_repeatable_and_leaves_global_rng_alone(client):
    req = ChatRequest(messages=MESSAGES, max_tokens=10, temperature=1.5, seed=11)
    state = torch.get_rng_state()
    a = client.complete(req)
    assert torch.equal(torch.get_rng_state(), state)
    b = client.complete(req)
    others = {client.complete(req.replace(seed=s)).text for s in range(12, 17)}
    assert a.text == b.text
    # Six seeds at temperature 1.5 over a ~400-token vocabulary: the samples cannot all coincide.
    assert len(others | {a.text}) > 1


def test_n_choices(client):
    greedy = client.complete(ChatRequest(messages=MESSAGES, max_tokens=5, n=3))
    assert len(greedy.choices) == 3 and len(set(greedy.choices)) == 1  # greedy: computed once, repeated
    sampled = client.complete(ChatRequest(messages=MESSAGES, max_tokens=8, n=3, temperature=2.0, seed=0))
    assert len(sampled.choices) == 3 and sampled.text == sampled.choices[0]


def test_stop_strings_cut_the_reply(client):
    full = client.complete(ChatRequest(messages=MESSAGES, max_tokens=12)).text
    assert len(full) > 2
    stop = full[1:3]  # a substring of the reply: the reply is cut at its first occurrence
    cut = client.complete(ChatRequest(messages=MESSAGES, max_tokens=12, stop=(stop,)))
    assert cut.text == full[: full.find(stop)]
    assert cut.meta["finish_reasons"] == ["stop"]


def test_request_for_another_model_is_refused(client):
    with pytest.raises(ValueError, match="this client serves"):
        client.complete(ChatRequest(messages=MESSAGES, model="gpt-4"))


def test_local_client_with_cache(client, tmp_path):
    cached = CachedClient(client, DiskCache(tmp_path / "c.sqlite"))
    before = client.calls
    req = ChatRequest(messages=MESSAGES, max_tokens=4)
    assert cached.complete(req).text == cached.complete(req).text
    assert client.calls == before + 1


# ---------------------------------------------------------------------------------------------------------
# batched generation
# ---------------------------------------------------------------------------------------------------------

QUESTIONS = ["What is the answer?", "Say something long and different, please.", "Hi", "Another one?"]


def convo(q: str) -> tuple[dict[str, str], ...]:
    return ({"role": "user", "content": q},)


def test_generate_many_greedy_equals_one_at_a_time(client):
    from rewardmix.models.chat_model import BatchItem

    cm = client.chat_model
    batch = cm.generate_many([BatchItem(convo(q)) for q in QUESTIONS], max_new_tokens=12)
    alone = [cm.generate(convo(q), max_new_tokens=12) for q in QUESTIONS]
    # left padding with position ids counted over real tokens: each row is the same model call as alone
    assert [g.new_token_ids[0] for g in batch] == [g.new_token_ids[0] for g in alone]
    assert [g.texts for g in batch] == [g.texts for g in alone]
    assert [g.prompt_tokens for g in batch] == [g.prompt_tokens for g in alone]
    assert [g.finish_reasons for g in batch] == [g.finish_reasons for g in alone]


def test_generate_many_sampling_depends_on_the_row_seed_not_on_the_batch(client):
    from rewardmix.models.chat_model import BatchItem

    cm = client.chat_model
    a = BatchItem(convo(QUESTIONS[0]), seed=7)
    with_b = cm.generate_many([a, BatchItem(convo(QUESTIONS[1]), seed=1)], max_new_tokens=16, temperature=1.0)
    with_c = cm.generate_many([BatchItem(convo(QUESTIONS[2]), seed=2), a], max_new_tokens=16, temperature=1.0)
    assert with_b[0].new_token_ids == with_c[1].new_token_ids
    other_seed = cm.generate_many([a._replace(seed=8)], max_new_tokens=16, temperature=1.0)
    assert other_seed[0].new_token_ids != with_b[0].new_token_ids


def test_concurrent_requests_are_answered_in_batches_with_the_same_answers(saved_model):
    from concurrent.futures import ThreadPoolExecutor

    one = LocalChatClient(saved_model, device="cpu")
    batched = LocalChatClient(saved_model, device="cpu", max_batch_size=4, batch_wait_s=0.5)
    requests = [ChatRequest.user(q, max_tokens=10, temperature=0.0) for q in QUESTIONS * 2]
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(batched.complete, requests))
    assert [a.text for a in answers] == [one.complete(r).text for r in requests]
    assert batched.calls == 8 and batched.batches < 8  # answered together, not one by one
    assert [a.meta["backend"] for a in answers] == ["local"] * 8


def test_a_failing_batch_raises_in_every_waiting_caller(saved_model, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    batched = LocalChatClient(saved_model, device="cpu", max_batch_size=4, batch_wait_s=0.5)

    def boom(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(batched.chat_model, "generate_many", boom)
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(batched.complete, ChatRequest.user(q, max_tokens=4)) for q in QUESTIONS[:3]]
        errors = [f.exception(timeout=30) for f in futures]
    assert all(isinstance(e, RuntimeError) and "simulated" in str(e) for e in errors)
    assert not batched._leader and not batched._queue  # the client is usable again
