"""strata.gpu against the CPU codec: skips without torch, CUDA, or a CUDA build
of strata (CI and this machine have none)."""
import numpy as np
import pytest

import strata

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
gpu = pytest.importorskip("strata.gpu")

SEED = 5


def test_quant_encode_matches_the_cpu_codec_and_decodes_back():
    kv = np.random.default_rng(SEED).standard_normal((2, 4, 64, 2, 64)).astype(np.float16)
    spec = "quant:bits=4,group=32"
    blk = strata.encode_kv(kv, spec, kv_first=True)
    hdr = strata.block_header(blk)
    n = gpu.quant_payload_bytes(hdr, spec)
    assert n == hdr["payload_length"]
    d_kv = torch.from_numpy(kv.view(np.int16)).cuda()
    d_payload = torch.empty(n, dtype=torch.uint8, device="cuda")
    gpu.quant_encode(d_kv, d_payload, hdr, spec)
    torch.cuda.synchronize()
    assert d_payload.cpu().numpy().tobytes() == blk[strata.BLOCK_HEADER_SIZE:]
    d_out = torch.empty_like(d_kv)
    gpu.quant_decode(d_payload, d_out, hdr, hdr["codec_params"])
    torch.cuda.synchronize()
    cpu = strata.decode_kv(blk, kv_first=True)
    np.testing.assert_array_equal(d_out.cpu().numpy().view(np.float16), cpu)


def test_paged_scatter_then_gather_round_trips_a_block():
    layers, tokens, heads, dim, page = 2, 32, 2, 64, 16
    kv = np.random.default_rng(SEED).standard_normal((layers, 2, tokens, heads, dim)).astype(np.float16)
    blk = strata.encode_kv(kv)
    hdr = strata.block_header(blk)
    raw = torch.frombuffer(bytearray(blk[strata.BLOCK_HEADER_SIZE:]), dtype=torch.uint8).cuda()
    caches = [torch.zeros((8, 2, page, heads, dim), dtype=torch.float16, device="cuda")
              for _ in range(layers)]
    ids = torch.tensor([5, 2], dtype=torch.int32, device="cuda")
    gpu.paged_scatter(raw, caches, ids, hdr, num_pages=8, page_size=page)
    back = torch.empty_like(raw)
    gpu.paged_gather(caches, ids, back, hdr, num_pages=8, page_size=page)
    torch.cuda.synchronize()
    assert back.cpu().numpy().tobytes() == blk[strata.BLOCK_HEADER_SIZE:]


def test_host_memory_is_refused():
    with pytest.raises(strata.InvalidArgument, match="CUDA"):
        gpu.rope_shift(torch.zeros(64, dtype=torch.float16), torch.zeros(64, dtype=torch.float16),
                       dtype="float16", head_dim=64, num_vectors=1, delta=3)
