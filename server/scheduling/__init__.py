"""Schedulers that batch the model work of every concurrent call: one VAD run per tick
for all active calls, and batched Whisper for their final and partial transcripts."""
