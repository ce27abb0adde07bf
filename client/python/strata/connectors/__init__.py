"""Engine connectors over the `strata` package (docs/connectors.md).

- `strata.connectors.vllm`: `StrataConnector`, a vLLM KV connector (KVConnectorBase_V1),
  loaded with `kv_connector_module_path`.
- `strata.connectors.sglang`: `StrataHiCacheStorage`, an SGLang HiCache L3 storage backend,
  loaded as the "dynamic" backend.

Neither module is imported here: each needs its engine (and torch) installed.
"""
