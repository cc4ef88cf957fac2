"""The ``process`` stage and its steps: main-text extraction, normalization, boilerplate, PII, quality filters."""
