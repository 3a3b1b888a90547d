"""gRPC transport: the VoiceAgent service, health checking and reflection."""
