"""A custom Python model with a declared input type: does a product review's text agree
with its star rating? Serve it with MODEL=examples.review_model:ReviewCheck.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from service.models.sentiment import VaderSentiment


class Review(BaseModel):
    """The input: the review's text and its 1-5 star rating."""

    text: str = Field(min_length=1, max_length=10_000)
    stars: int = Field(ge=1, le=5)


class Verdict(BaseModel):
    """The output: the text's sentiment and whether it agrees with the stars."""

    sentiment: Literal["positive", "negative", "neutral"]
    compound: float
    consistent: bool


class ReviewCheck:
    input_type = Review
    output_type = Verdict
    version = "1.0"

    def setup(self) -> None:
        # Runs once after loading, in the process that will call predict.
        self._sentiment = VaderSentiment()

    def predict(self, review: Review) -> dict[str, Any]:
        scored = self._sentiment.predict(review.text)
        expected = "positive" if review.stars >= 4 else "negative" if review.stars <= 2 else None
        consistent = expected is None or scored["label"] in (expected, "neutral")
        return Verdict(
            sentiment=scored["label"],
            compound=scored["scores"]["compound"],
            consistent=consistent,
        ).model_dump()

    def predict_batch(self, reviews: list[Review]) -> list[dict[str, Any]]:
        return [self.predict(review) for review in reviews]
