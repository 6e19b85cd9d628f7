"""localimg: an offline image-generation server that speaks the OpenAI Images API."""

__version__ = "0.1.0"
