"""The REST API (PROTOCOL.md section 6): rooms, history, state, publish, restore."""
