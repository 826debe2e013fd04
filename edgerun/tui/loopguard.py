"""The loop guard: notice when a reply keeps repeating the same span of text.

Small models at low temperature fall into loops (the 0.5B coder repeated one paragraph nine
times at temperature 0.2). The guard looks only at the tail of the reply: it fires when the
text ends with a span repeated back to back at least `min_repeats` times and the repeated
part is long enough that ordinary text does not trip it (a row of `=` or three identical
`pass` lines are fine; the same sentence five times is not).
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_SPAN = 8  # shorter periods are rulers, indentation or ASCII art, not a model looping
MAX_SPAN = 600
MIN_REPEATS = 3
MIN_REPEATED_CHARS = 200  # span * repeats: a 10-char span must repeat 20 times, a 100-char one 3


@dataclass(frozen=True)
class Loop:
    """A detected loop: the repeated span and how many times it occurs at the end of the text."""

    span: str
    repeats: int


def find_loop(text: str, min_span: int = MIN_SPAN, max_span: int = MAX_SPAN,
              min_repeats: int = MIN_REPEATS, min_chars: int = MIN_REPEATED_CHARS) -> Loop | None:
    """The shortest span that `text` ends with, repeated back to back often enough, or None."""
    n = len(text)
    for period in range(min_span, min(max_span, n // min_repeats) + 1):
        need = max(min_repeats, -(-min_chars // period))  # ceil(min_chars / period)
        if period * need > n:
            continue
        span = text[n - period:]
        if any(period % q == 0 and span == span[:q] * (period // q) for q in range(1, min_span)):
            continue  # a ruler or a run of one character: its real period is below the minimum
        # text[-need*period:] == span * need, compared without building the long string
        if all(text[n - (k + 1) * period:n - k * period] == span for k in range(1, need)):
            k = need
            while n - (k + 1) * period >= 0 and text[n - (k + 1) * period:n - k * period] == span:
                k += 1
            return Loop(span, k)
    return None
