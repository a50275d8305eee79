"""The bundled minimal live runtime: frontend, router, prefill/decode workers."""
