"""The bundled GPT trainer (needs the ``train`` extra: torch, safetensors)."""
