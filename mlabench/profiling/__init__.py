"""Profiling one case after its timed samples: a Perfetto trace, a per-kernel breakdown, a CUDA
memory snapshot and NVTX ranges for Nsight (see docs/profiling.md)."""
