"""Deduplication: exact (normalized text hash) and MinHash near-duplicates (signatures → buckets → clusters → apply)."""
