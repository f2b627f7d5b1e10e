"""Integrations of sandboxq with other frameworks (each an optional extra)."""
