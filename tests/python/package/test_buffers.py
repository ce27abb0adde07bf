"""The memory paths of the package without torch: the buffer protocol,
__array_interface__, and the torch-tensor protocol (data_ptr, element_size,
is_contiguous, device, numel, dtype, shape) mimicked over a numpy array."""
import numpy as np
import pytest

import strata


class ArrayInterfaceOnly:
    """Exposes a numpy array's memory through __array_interface__ only."""

    def __init__(self, arr):
        self._arr = arr
        self.__array_interface__ = arr.__array_interface__


class _Device:
    def __init__(self, type_):
        self.type = type_


class TensorLike:
    """What strata reads of a torch tensor, backed by a numpy array."""

    def __init__(self, arr, dtype="torch.uint8", device="cpu", contiguous=True):
        self._arr = arr
        self.dtype = dtype
        self.device = _Device(device)
        self.shape = arr.shape
        self._contiguous = contiguous

    def data_ptr(self):
        return self._arr.ctypes.data

    def element_size(self):
        return self._arr.itemsize

    def numel(self):
        return self._arr.size

    def is_contiguous(self):
        return self._contiguous


@pytest.fixture
def store_with_block():
    kv = np.random.default_rng(11).standard_normal((2, 2, 16, 2, 64)).astype(np.float16)
    blk = strata.encode_kv(kv)
    with strata.LocalStore(dram_bytes=8 << 20) as s:
        s.put(b"k" * 16, blk)
        yield s, blk, kv


def test_get_into_array_interface_and_tensor_like_objects(store_with_block):
    s, blk, _ = store_with_block
    backing = np.zeros(len(blk), np.uint8)
    assert s.get_into(b"k" * 16, ArrayInterfaceOnly(backing)) == len(blk)
    assert backing.tobytes() == blk
    backing2 = np.zeros(len(blk), np.uint8)
    assert s.get_into(b"k" * 16, TensorLike(backing2)) == len(blk)
    assert backing2.tobytes() == blk
    assert s.put(b"j" * 16, TensorLike(np.frombuffer(blk, np.uint8).copy())) is True
    assert s.get(b"j" * 16) == blk


def test_tensor_like_objects_that_are_not_host_memory_are_refused(store_with_block):
    s, blk, _ = store_with_block
    with pytest.raises(strata.InvalidArgument, match="cuda"):
        s.get_into(b"k" * 16, TensorLike(np.zeros(len(blk), np.uint8), device="cuda"))
    with pytest.raises(strata.InvalidArgument, match="contiguous"):
        s.get_into(b"k" * 16, TensorLike(np.zeros(len(blk), np.uint8), contiguous=False))
    with pytest.raises(strata.InvalidArgument, match="out"):
        s.get_into(b"k" * 16, object())
    ro = np.zeros(len(blk), np.uint8)
    ro.flags.writeable = False
    with pytest.raises(strata.InvalidArgument, match="out"):
        s.get_into(b"k" * 16, ArrayInterfaceOnly(ro))


def test_encode_and_decode_through_tensor_like_objects(store_with_block):
    _, blk, kv = store_with_block
    # A bf16 "tensor" is encoded as bfloat16 bits; float16 as float16.
    bits = (kv.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    bf_blk = strata.encode_kv(TensorLike(bits, dtype="torch.bfloat16"))
    assert strata.block_header(bf_blk)["dtype"] == "bfloat16"
    assert strata.encode_kv(TensorLike(kv, dtype="torch.float16")) == blk
    out = np.zeros_like(kv)
    strata.decode_kv(blk, out=TensorLike(out, dtype="torch.float16"))
    np.testing.assert_array_equal(out, kv)
    out_bits = np.zeros_like(bits)
    strata.decode_kv(bf_blk, out=TensorLike(out_bits, dtype="torch.bfloat16"))
    np.testing.assert_array_equal(out_bits, bits)
    with pytest.raises(strata.InvalidArgument, match="out"):
        strata.decode_kv(bf_blk, out=TensorLike(np.zeros_like(kv), dtype="torch.float16"))
