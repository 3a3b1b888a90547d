"""Conversation state that outlives one gRPC stream: kept per call in a store (in
memory by default, Redis when several replicas share calls), so a gateway whose stream
breaks can resume the call on any replica."""

from voxline.store.base import CallState, ConversationStore, StoreError, open_store

__all__ = ["CallState", "ConversationStore", "StoreError", "open_store"]
