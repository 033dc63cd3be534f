"""Low-resource grounded multimodal NER: ``nlp = refineg.load(MODEL_DIR)``, then ``nlp(text)``."""

__version__ = "0.1.0"
__all__ = ["Pipeline", "load"]


def __getattr__(name: str):
    # Lazy, so that `import refineg` stays fast: the pipeline pulls in PyTorch and transformers.
    if name in __all__:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'refineg' has no attribute {name!r}")
