"""corpusforge: web pages to a trained tokenizer, Arrow token shards and a small GPT."""

__version__ = "0.1.0"

from corpusforge.document import Document  # noqa: E402  (light: standard library only)

__all__ = ["Document", "__version__"]
