"""encode_kv / decode_kv / block_header over the C++ codecs: round trips per
codec, partial decode equal to the slice of a full decode, and error mapping."""
import numpy as np
import pytest

import strata

SEED = 20261123  # Fixed; printed by the first test for reproduction.
SHAPE = (4, 2, 64, 2, 64)  # [layers, 2, tokens, kv_heads, head_dim]


def kv_fp16(shape=SHAPE, seed=SEED):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float16)


def to_bf16_bits(x32):
    return (np.ascontiguousarray(x32, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


def test_raw_round_trip_is_exact_for_every_dtype():
    print(f"seed={SEED}")
    kv = kv_fp16()
    blk = strata.encode_kv(kv)
    assert len(blk) == strata.BLOCK_HEADER_SIZE + kv.nbytes
    out = strata.decode_kv(blk)
    assert out.dtype == np.float16 and out.shape == SHAPE
    np.testing.assert_array_equal(out, kv)

    bf = to_bf16_bits(kv.astype(np.float32))
    blk = strata.encode_kv(bf)
    assert strata.block_header(blk)["dtype"] == "bfloat16"
    back = strata.decode_kv(blk)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, bf)

    f32 = kv.astype(np.float32)
    np.testing.assert_array_equal(strata.decode_kv(strata.encode_kv(f32)), f32)


def test_raw_payload_is_the_block_layout_and_kv_first_keeps_it():
    kv = kv_fp16()
    blk = strata.encode_kv(kv)
    payload = np.frombuffer(blk, np.float16, offset=strata.BLOCK_HEADER_SIZE)
    np.testing.assert_array_equal(payload, kv.transpose(1, 0, 2, 3, 4).ravel())
    kv_first = np.ascontiguousarray(kv.transpose(1, 0, 2, 3, 4))
    assert strata.encode_kv(kv_first, kv_first=True) == blk
    np.testing.assert_array_equal(strata.decode_kv(blk, kv_first=True), kv_first)


def test_float32_input_is_rounded_to_the_declared_dtype():
    x = np.random.default_rng(SEED).standard_normal(SHAPE).astype(np.float32)
    blk = strata.encode_kv(x, dtype="float16")
    np.testing.assert_array_equal(strata.decode_kv(blk), x.astype(np.float16))
    out = np.empty(SHAPE, np.float32)
    assert strata.decode_kv(blk, out=out) is out
    np.testing.assert_array_equal(out, x.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("spec,max_rel", [
    ("quant:bits=8,group=32", 0.02),
    ("quant:bits=4,group=64", 0.2),
    ("quant:k_bits=4,v_bits=2,group=32,n_sink=4,outlier_bp=100", 0.5),
    ("quant:bits=2,group=64,keys_per_token=1", 1.0),
])
def test_quant_round_trip_error_and_header(spec, max_rel):
    kv = kv_fp16()
    blk = strata.encode_kv(kv, spec)
    hdr = strata.block_header(blk)
    assert hdr["codec"] == "quant" and hdr["dtype"] == "float16"
    assert (hdr["num_layers"], hdr["num_tokens"], hdr["num_kv_heads"], hdr["head_dim"]) == (4, 64, 2, 64)
    assert hdr["block_bytes"] == len(blk) < strata.BLOCK_HEADER_SIZE + kv.nbytes
    # The header's spec names every field and parses back to the same params.
    assert strata.parse_codec_spec(hdr["codec_spec"]) == ("quant", hdr["codec_params"])
    out = strata.decode_kv(blk).astype(np.float32)
    ref = kv.astype(np.float32)
    rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert rel < max_rel, rel


@pytest.mark.parametrize("spec", [
    "raw", "quant:bits=4,group=32", "quant:bits=2,group=64,n_sink=2",
    "tokensparse:n_sink=4,window=8,budget=0.5", "cluster:n_sink=4,first_layer=1",
])
def test_partial_decode_equals_the_slice_of_a_full_decode(spec):
    kv = kv_fp16()
    blk = strata.encode_kv(kv, spec)
    full = strata.decode_kv(blk)
    np.testing.assert_array_equal(strata.decode_kv(blk, layers=slice(1, 3)), full[1:3])
    np.testing.assert_array_equal(strata.decode_kv(blk, layers=2), full[2:3])
    np.testing.assert_array_equal(strata.decode_kv(blk, tokens=range(5, 40)), full[:, :, 5:40])
    np.testing.assert_array_equal(strata.decode_kv(blk, tokens=(10, 12)), full[:, :, 10:12])
    idx = [0, 3, 9, 63]
    np.testing.assert_array_equal(strata.decode_kv(blk, layers=(0, 2), tokens=idx),
                                  full[0:2][:, :, idx])
    np.testing.assert_array_equal(strata.decode_kv(blk, tokens=slice(0, 64, 8)),
                                  full[:, :, ::8])
    out = np.empty((2, 2, 4, 2, 64), np.float16)
    strata.decode_kv(blk, out=out, layers=slice(2, 4), tokens=np.array(idx))
    np.testing.assert_array_equal(out, full[2:4][:, :, idx])


@pytest.mark.parametrize("spec", ["raw", "quant:bits=2,group=32", "quant:bits=4,group=64"])
def test_make_block_from_a_payload_gives_the_encode_kv_bytes(spec):
    blk = strata.encode_kv(kv_fp16(), spec)
    hdr = strata.block_header(blk)
    payload = blk[strata.BLOCK_HEADER_SIZE:]
    assert strata.make_block(payload, hdr, hdr["codec_spec"]) == blk
    assert strata.make_block(np.frombuffer(payload, np.uint8), hdr, spec) == blk


def test_make_block_refuses_a_bad_shape_or_payload_naming_the_field():
    blk = strata.encode_kv(kv_fp16())
    hdr = strata.block_header(blk)
    payload = blk[strata.BLOCK_HEADER_SIZE:]
    with pytest.raises(strata.InvalidArgument, match="shape.head_dim"):
        strata.make_block(payload, {k: v for k, v in hdr.items() if k != "head_dim"}, "raw")
    with pytest.raises(strata.InvalidArgument, match="payload_length"):
        strata.make_block(payload[:-2], hdr, "raw")  # Raw payloads must match the shape.
    with pytest.raises(strata.InvalidArgument, match="shape.head_dim"):
        strata.make_block(payload, dict(hdr, head_dim=-1), "raw")
    # Codec params that do not fit the shape, as encode_kv refuses them.
    with pytest.raises(strata.InvalidArgument, match="v_group"):
        strata.make_block(payload, hdr, "quant:bits=4,group=128")


def test_decode_into_the_wrong_out_raises_invalid_argument_naming_out():
    blk = strata.encode_kv(kv_fp16())
    with pytest.raises(strata.InvalidArgument, match="out"):
        strata.decode_kv(blk, out=np.empty((4, 2, 63, 2, 64), np.float16))
    with pytest.raises(strata.InvalidArgument, match="out"):
        strata.decode_kv(blk, out=np.empty(SHAPE, np.int32))
    with pytest.raises(strata.InvalidArgument, match="out"):
        strata.decode_kv(blk, out=np.empty(SHAPE, np.float16)[:, :, ::2])  # Strided.


def test_corrupted_block_raises_data_loss_naming_the_checksum():
    blk = bytearray(strata.encode_kv(kv_fp16(), "quant:bits=4,group=32"))
    blk[strata.BLOCK_HEADER_SIZE + 100] ^= 0x40
    with pytest.raises(strata.DataLoss, match="checksum") as e:
        strata.decode_kv(blk)
    assert e.value.code == "DATA_LOSS"
    with pytest.raises(strata.DataLoss):
        strata.block_header(bytes(blk))
    with pytest.raises(strata.DataLoss):
        strata.decode_kv(blk, layers=1)


def test_malformed_blocks_and_arguments_raise_invalid_argument_naming_the_field():
    blk = strata.encode_kv(kv_fp16())
    with pytest.raises(strata.InvalidArgument, match="payload_length"):
        strata.decode_kv(blk[:-1])
    with pytest.raises(strata.InvalidArgument):
        strata.block_header(b"\x00" * 200)
    with pytest.raises(strata.InvalidArgument, match="kv"):
        strata.encode_kv(np.zeros((4, 3, 8, 2, 64), np.float16))
    with pytest.raises(strata.InvalidArgument, match="kv"):
        strata.encode_kv(np.zeros((4, 2, 8, 2, 64), np.float16), dtype="bfloat16")
    with pytest.raises(strata.InvalidArgument, match="codec"):
        strata.encode_kv(kv_fp16(), "zip")
    with pytest.raises(strata.InvalidArgument, match="codec"):
        strata.encode_kv(kv_fp16(), "quant:colour=red")
    with pytest.raises(strata.InvalidArgument, match="k_bits"):
        strata.encode_kv(kv_fp16(), "quant:bits=5")
    with pytest.raises(strata.InvalidArgument, match="layers"):
        strata.decode_kv(blk, layers=slice(0, 4, 2))
    with pytest.raises(strata.InvalidArgument, match="layer_begin"):
        strata.decode_kv(blk, layers=slice(5, 9))


def test_codecs_that_need_a_profile_raise_failed_precondition_without_one():
    for spec in ("aqua:bits=2,group=64", "lowrank:rank=8", "sparse:atoms_per_chunk=4"):
        with pytest.raises(strata.FailedPrecondition, match="profile"):
            strata.encode_kv(kv_fp16(), spec)
