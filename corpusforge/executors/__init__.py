"""Executors run a stage's pending tasks; the runner keeps the lock, the completion markers and the manifests.

``local`` runs tasks in this process or in a pool of worker processes. Both paths settle a failed task the
same way, through ``policy.decide``.
"""
