"""A gateway-side client of the Converse API (used by `voxline call`, tests, benches)."""
