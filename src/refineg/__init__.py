"""Low-resource grounded multimodal NER."""

__version__ = "0.1.0"
