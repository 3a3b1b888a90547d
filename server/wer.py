"""Word error rate against reference transcripts, after the usual normalisation."""

from __future__ import annotations

import re

import jiwer

from voxline.agent.text import collapse_spoken_digits

_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11",
    "twelve": "12", "thirteen": "13", "fourteen": "14", "fifteen": "15", "sixteen": "16",
    "seventeen": "17", "eighteen": "18", "nineteen": "19", "twenty": "20", "thirty": "30",
    "forty": "40", "fifty": "50",
}


def normalize(text: str) -> str:
    """Lower case, no punctuation, digits as numerals: "Mr. Smith, one two" and
    "mister smith 12" compare equal on the parts that matter."""
    text = text.lower().replace("mr.", "mister").replace("mrs.", "missus")
    text = collapse_spoken_digits(text)
    text = re.sub(r"[^\w\s']", " ", text)
    words = [_NUMBER_WORDS.get(w, w) for w in text.split()]
    return " ".join(words)


def wer(reference: str, hypothesis: str) -> float:
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(jiwer.wer(ref, hyp))
