"""mlabench: benchmark and memory-profile LLM attention variants.

MHA, MQA, GQA, DeepSeek MLA (expanded, latent, absorbed), lowrank-kv and
linformer, on eager PyTorch, torch.compile and fused GPU paths.
"""

__version__ = "0.1.0"
