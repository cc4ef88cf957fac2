"""Tokenizer training and report, the fast encoder, token-shard writing, the dataset card, readers and lineage."""
