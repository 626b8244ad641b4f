"""Upstream protocols: one module per provider's wire protocol."""
