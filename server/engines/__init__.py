"""Model engines: one base class per kind (VAD, STT, LLM, TTS), one adapter per backend."""
