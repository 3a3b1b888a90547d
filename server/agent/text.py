"""Text helpers for speech: spoken-number normalisation and the clause chunker that
hands LLM output to TTS as soon as a piece can be spoken."""

from __future__ import annotations

import re

_DIGIT_WORDS = {
    "zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9",
}
_DIGIT = r"(?:\d+|zero|one|two|three|four|five|six|seven|eight|nine)"
# "oh" is a zero only inside a number, never at its start ("Oh, one thing").
_SEQUENCE = re.compile(rf"\b{_DIGIT}(?:[\s,-]+(?:{_DIGIT}|oh))+\b", re.IGNORECASE)
_PART = re.compile(rf"{_DIGIT}|oh", re.IGNORECASE)


def collapse_spoken_digits(text: str) -> str:
    """Join digit sequences as callers say them: "4 8 2 1 7", "4-8-2-1-7" and
    "four eight two one seven" all become "48217" (three digits or more)."""

    def join(m: re.Match[str]) -> str:
        parts = [p if p.isdigit() else _DIGIT_WORDS[p.lower()] for p in _PART.findall(m[0])]
        number = "".join(parts)
        return number if len(number) >= 3 else m[0]

    return _SEQUENCE.sub(join, text)


def spoken_numbers(text: str) -> set[str]:
    """The numbers in what the caller said, spoken digit sequences joined."""
    return set(re.findall(r"\d+", collapse_spoken_digits(text)))


_SENTENCE_END = re.compile(r"[.!?](?=\s)")
_CLAUSE_END = re.compile(r"[,;:](?=\s)")


class ClauseChunker:
    """Cuts streamed text into speakable pieces: whole sentences, or a clause once the
    text is long enough that waiting for the sentence end would delay the first audio."""

    def __init__(self, min_clause_chars: int = 30) -> None:
        self.min_clause_chars = min_clause_chars
        self._buf = ""
        self.sentences = 0  # complete sentences seen so far

    def push(self, text: str) -> list[str]:
        self._buf += text
        pieces = []
        while True:
            m = _SENTENCE_END.search(self._buf)
            if m is not None:
                self.sentences += 1
            else:
                m = next((c for c in _CLAUSE_END.finditer(self._buf)
                          if c.end() >= self.min_clause_chars), None)
            if m is None:
                break
            piece, self._buf = self._buf[:m.end()].strip(), self._buf[m.end():]
            if piece:
                pieces.append(piece)
        return pieces

    def flush(self) -> str:
        piece, self._buf = self._buf.strip(), ""
        return piece
