"""NVIDIA Riva-compatible ASR and TTS services, served on Voxline's gRPC port with
Voxline's own schedulers, turn-taking, models, keys and limits (stubs from the
nvidia-riva-client package)."""
