"""The serving runtime: the OpenAI-compatible gateway, the CPU reference engine and the engine stats exporter.

- `runtime.serve.gateway`: auth, limits, addon routing, streaming, metrics and scale-from-zero in front of
  trtllm-serve replicas (`byoc serve gateway`).
- `runtime.serve.engine`: a CPU engine that speaks trtllm-serve's HTTP API with a real Hugging Face model, for
  development and tests (`byoc serve engine`).
- `runtime.serve.engine_stats`: re-exports trtllm-serve's JSON iteration stats as Prometheus gauges
  (`byoc serve engine-stats`).

Nothing here imports torch at module level except the engine's generation module, so the gateway starts fast.
"""
