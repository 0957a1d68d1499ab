"""Token buckets behind one interface: process memory or Redis (centrifuge's split)."""
