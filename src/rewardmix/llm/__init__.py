"""Teacher and judge LLM clients (OpenAI-compatible HTTP, local transformers), prompts, cache, batch jobs.

- ``client``: ``ChatRequest`` (its ``key()`` never includes an API key), ``ChatResponse``, the ``ChatClient`` protocol.
- ``http``: ``OpenAICompatibleClient`` (OpenAI, vLLM, llama.cpp, Ollama) with retries, backoff and rate limits.
- ``local``: ``LocalChatClient`` over a ``transformers`` model.
- ``cache``: ``DiskCache`` and ``CachedClient`` (the same request is never paid for twice).
- ``batch``: ``run_batch``, a resumable, concurrent batch job writing JSONL.
- ``prompts``: RLLR Appendix B (rationales), C (ranking), G (pairwise) and the AlpacaEval judge (CRS Fig. 31).
- ``filters``: refusal and contradiction filter for rationales.

Keys are kept out of logs, errors, caches and files by :mod:`rewardmix.redact` (below ``rundir``, which uses it too).
"""
