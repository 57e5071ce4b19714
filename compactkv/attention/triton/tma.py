"""Tensor maps (CUtensorMap) of code planes for the tensor-memory accelerator (sm_90+), made through the CUDA
driver's `cuTensorMapEncodeTiled` and kept in device memory, where the table kernel's tensor copies
(`kernels_lut._bulk_copy_asm` with a box) read them.

A map describes one plane uint8 [B, H, T, R] (R code bytes per token, rows contiguous, other strides 16-byte
multiples) and a box of `rows` tokens x R bytes of one (batch, head); the box lands in shared memory with the
64-byte swizzle (`kernels_lut.tma_stage_layout`). Maps are made once per (address, shape, strides, box) and kept
for the life of the process (128 bytes of device memory each): a CUDA graph that captured a launch reads the
map's memory at every replay, so a map is never freed or rewritten. A map cannot be made inside a stream capture
(its host-to-device copy); `GreedyStepGraph`'s warm-up steps make them before it, and a launch captured without
its map copies V without the accelerator (`gluon._launch_lut`).
"""

from __future__ import annotations

import ctypes
import threading

import torch

SWIZZLE_64B = 2  # CUtensorMapSwizzle
_UINT8 = 0  # CU_TENSOR_MAP_DATA_TYPE_UINT8
L2_PROMOTION = 2  # CU_TENSOR_MAP_L2_PROMOTION_L2_128B (L2_256B = 3 timed the same on the H200, session 34)
_MAPS: dict[tuple, torch.Tensor] = {}
_LOCK = threading.Lock()
_ENCODE = None


def map_arguments(codes: torch.Tensor, rows: int) -> tuple[list[int], list[int], list[int]]:
    """(global dims, global strides in bytes, box dims) of `cuTensorMapEncodeTiled` for plane `codes`, innermost
    first: dims (R, T, H, B), strides of T, H, B, box (R, rows, 1, 1). ValueError where the accelerator cannot
    read the plane (what is wrong and what it takes)."""
    if codes.dtype != torch.uint8 or codes.dim() != 4 or codes.stride(-1) != 1:
        raise ValueError(f"a tensor map takes a uint8 plane [B, H, T, R] with contiguous rows, got {codes.dtype} "
                         f"{list(codes.shape)} strides {codes.stride()}")
    b, h, t, r = codes.shape
    if r % 16 or not 16 <= r <= 64:
        raise ValueError(f"a tensor map with the 64-byte swizzle takes rows of 16 to 64 bytes in 16-byte steps, "
                         f"got {r}")
    strides = [codes.stride(2), codes.stride(1), codes.stride(0)]
    if codes.data_ptr() % 16 or any(s % 16 for s in strides) or any(s >= 1 << 40 for s in strides):
        raise ValueError(f"a tensor map needs a 16-byte aligned plane with 16-byte multiple strides below 2^40, got "
                         f"address {codes.data_ptr():#x} and strides {codes.stride()}")
    if not 1 <= rows <= 256:
        raise ValueError(f"a tensor map's box takes 1 to 256 rows, got {rows}")
    return [r, t, h, b], strides, [r, rows, 1, 1]


def _encoder():
    global _ENCODE
    if _ENCODE is None:
        lib = ctypes.CDLL("libcuda.so.1")
        fn = lib.cuTensorMapEncodeTiled
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p,
                       ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint64),
                       ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint32), ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_int]
        _ENCODE = fn
    return _ENCODE


def _encode(codes: torch.Tensor, rows: int) -> bytes:
    dims, strides, box = map_arguments(codes, rows)
    raw = ctypes.create_string_buffer(256)  # the map wants 64-byte alignment: take an aligned 128 bytes inside
    at = (ctypes.addressof(raw) + 127) & ~127
    err = _encoder()(ctypes.c_void_p(at), _UINT8, 4, ctypes.c_void_p(codes.data_ptr()),
                     (ctypes.c_uint64 * 4)(*dims), (ctypes.c_uint64 * 3)(*strides), (ctypes.c_uint32 * 4)(*box),
                     (ctypes.c_uint32 * 4)(1, 1, 1, 1), 0, SWIZZLE_64B, L2_PROMOTION, 0)
    if err:
        raise RuntimeError(f"cuTensorMapEncodeTiled failed (CUresult {err}) for a plane of dims {dims}, strides "
                           f"{strides}, box {box}")
    return ctypes.string_at(at, 128)


def tensor_map(codes: torch.Tensor, rows: int) -> torch.Tensor | None:
    """uint8 [128] on codes' device: the tensor map of plane `codes` with boxes of `rows` tokens (`map_arguments`),
    made on first request and kept (module docstring); None where it is not made yet and the stream is being
    captured (a host-to-device copy cannot be; the caller then copies without the map)."""
    key = (codes.device.index, codes.data_ptr(), tuple(codes.shape), codes.stride(), rows)
    hit = _MAPS.get(key)
    if hit is not None or torch.cuda.is_current_stream_capturing():
        return hit
    with _LOCK:
        if key not in _MAPS:
            raw = torch.frombuffer(bytearray(_encode(codes, rows)), dtype=torch.uint8)
            _MAPS[key] = raw.to(codes.device)
        return _MAPS[key]
