"""mlabench: benchmark and memory-profile LLM attention designs.

MHA, MQA, GQA, DeepSeek MLA (expanded, latent, absorbed), lowrank-kv and
linformer, and the designs after MLA (GTA, GLA, TPA, DeepSeek Sparse Attention),
on eager PyTorch, torch.compile and fused GPU paths.
"""

__version__ = "0.1.0"
