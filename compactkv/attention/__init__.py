"""Attention over the compressed cache: the torch reference and the transformers registration."""

from .interface import attach, compactkv_attention_forward, register_attention
from .reference import compressed_attention

__all__ = ["attach", "compactkv_attention_forward", "compressed_attention", "register_attention"]
