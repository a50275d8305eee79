"""The bundled minimal live runtime: frontend, router, prefill/decode workers, in separate processes.

Read in this order (nano-vllm's chain, the simulator's worker has the same shape):
``sequence`` (a request inside a worker) -> ``block_manager`` (paged KV blocks) -> ``scheduler``
(the simulator's knobs: max_batch_tokens, max_seqs, chunked prefill; recompute preemption) ->
``model`` (the Llama-style decoder over the paged cache) -> ``engine`` (one iteration) ->
``worker`` (an engine behind a loopback port; KV hand-off) -> ``router`` -> ``frontend`` (retries,
request log, metrics) -> ``api`` (OpenAI HTTP) -> ``serve`` (start, wait ready, stop). ``wire`` frames the
messages; ``tokenizer`` and ``smollm2`` give text and the one real model.
"""
