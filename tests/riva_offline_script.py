"""What Riva's scripts/asr/transcribe_file_offline.py does with its default arguments,
run with whichever nvidia-riva-client is first on the path (the tests run it with the
newest release as well as the pinned one). Prints the client's version and the
transcript as JSON. Usage: riva_offline_script.py HOST:PORT API_KEY WAV"""

import json
import sys
from importlib.metadata import version

import riva.client

server, key, path = sys.argv[1:4]
auth = riva.client.Auth(uri=server, metadata_args=[["x-api-key", key]])
asr = riva.client.ASRService(auth)
config = riva.client.RecognitionConfig(
    language_code="en-US", max_alternatives=1, profanity_filter=False,
    enable_automatic_punctuation=False, verbatim_transcripts=True,
    enable_word_time_offsets=False)
with open(path, "rb") as f:
    response = asr.offline_recognize(f.read(), config)
print(json.dumps({"client": riva.client.__file__, "version": version("nvidia-riva-client"),
                  "transcript": " ".join(r.alternatives[0].transcript
                                         for r in response.results)}))
