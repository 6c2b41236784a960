"""Offline data tools, run as `python -m vlp_jax.tools.<name>` (CAT filtering, concept targets)."""
