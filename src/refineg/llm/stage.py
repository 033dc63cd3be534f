"""What every MLLM stage is: a request for a post, a reader for the reply, and what the answer does
to the post. The pipeline asks, counts and falls back the same way for every stage."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar, Generic, TypeVar

from ..data.images import SentImage
from ..types import Prediction, Sample
from .client import LLMRequest

T = TypeVar("T")


@dataclass(frozen=True)
class Post:
    """One post on its way through the MLLM stages: the sample, its prediction so far, the image as sent
    (None: text alone) and the grounding demonstrations chosen for it."""

    sample: Sample
    prediction: Prediction
    image: SentImage | None = None
    demos: tuple[tuple[Sample, SentImage], ...] = ()


@dataclass(frozen=True)
class Outcome:
    """A stage's answer applied to a post: the new prediction and counts of what happened to the answer."""

    prediction: Prediction
    counts: Counter = field(default_factory=Counter)


class LLMStage(ABC, Generic[T]):
    """One MLLM stage. ``name`` keys its usage and counts (``refinement``, ``grounding``, ``combined``)."""

    name: ClassVar[str]

    @abstractmethod
    def request(self, post: Post) -> LLMRequest:
        """The chat request for a post."""

    @abstractmethod
    def parse(self, post: Post, text: str) -> T:
        """The answer in a reply; ParseError when it holds none."""

    @abstractmethod
    def apply(self, post: Post, answer: T) -> Outcome:
        """The post's prediction with the answer applied."""
