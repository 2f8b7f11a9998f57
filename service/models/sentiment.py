"""The default model: VADER sentiment of English text (lexicon ships inside the package)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import StringConstraints
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

# Non-empty text with at least one non-space character.
Text = Annotated[str, StringConstraints(min_length=1, pattern=r"\S")]

# The thresholds the VADER authors recommend for the compound score.
POSITIVE_AT = 0.05
NEGATIVE_AT = -0.05


class VaderSentiment:
    """Labels text positive, negative or neutral, with VADER's scores."""

    input_type = Text
    version = "vaderSentiment-3.3"
    example = "I love this product, it works great!"

    def __init__(self) -> None:
        self._analyzer = SentimentIntensityAnalyzer()

    def predict(self, text: str) -> dict[str, Any]:
        scores = self._analyzer.polarity_scores(text)
        compound = scores["compound"]
        if compound >= POSITIVE_AT:
            label = "positive"
        elif compound <= NEGATIVE_AT:
            label = "negative"
        else:
            label = "neutral"
        return {"label": label, "scores": scores}
