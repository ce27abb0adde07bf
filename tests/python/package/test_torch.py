"""Real CPU torch tensors through the package (skips when torch is absent,
as in CI): get_into a tensor, put from a tensor, encode/decode bf16 tensors."""
import numpy as np
import pytest

import strata

torch = pytest.importorskip("torch")


def test_get_into_and_put_from_cpu_tensors():
    kv = np.random.default_rng(2).standard_normal((2, 2, 16, 2, 64)).astype(np.float16)
    blk = strata.encode_kv(kv)
    with strata.LocalStore(dram_bytes=8 << 20) as s:
        assert s.put(b"t" * 16, torch.frombuffer(bytearray(blk), dtype=torch.uint8))
        out = torch.empty(len(blk), dtype=torch.uint8)
        assert s.get_into(b"t" * 16, out) == len(blk)
        assert out.numpy().tobytes() == blk
        half = torch.empty(len(blk) // 2, dtype=torch.float16)  # Any dtype.
        assert s.get_into(b"t" * 16, half) == len(blk)
        with pytest.raises(strata.InvalidArgument, match="contiguous"):
            s.get_into(b"t" * 16, torch.empty((2, len(blk)), dtype=torch.uint8).t())


def test_bf16_tensors_encode_and_decode_as_bfloat16():
    x = torch.randn(2, 2, 16, 2, 64, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    blk = strata.encode_kv(x)
    assert strata.block_header(blk)["dtype"] == "bfloat16"
    out = torch.empty_like(x)
    strata.decode_kv(blk, out=out)
    assert torch.equal(out, x)
    q = strata.encode_kv(x, "quant:bits=8,group=32")
    outf = torch.empty(x.shape, dtype=torch.float32)
    strata.decode_kv(q, out=outf)
    assert torch.allclose(outf, x.float(), atol=0.05, rtol=0.05)


def test_tokens_from_a_tensor_give_the_same_keys():
    ns = strata.KeyNamespace(model_id="m", num_layers=1, num_kv_heads=1, head_dim=64,
                             chunk_tokens=4)
    ids = torch.arange(12, dtype=torch.int64)
    assert ([c.key for c in strata.chunk_keys(ns, ids)] ==
            [c.key for c in strata.chunk_keys(ns, list(range(12)))])
