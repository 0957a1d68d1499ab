"""Presence ledger models live here (see the presence issue)."""
