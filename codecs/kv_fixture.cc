// placeholder: the SmolLM2 KV fixture reader lands here.
