"""Helpers for the SIP tests with real SIP clients (baresip, SIPp)."""
