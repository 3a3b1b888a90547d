"""Call audio: codecs, resampling and framing between the gateway and the 16 kHz engines."""
