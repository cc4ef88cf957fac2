"""Quality filters: each names its drop reasons (``gopher_short_doc``, ``c4_javascript``, …)."""
