"""Generation: `DynamicIDPipeline` (diffusers-style), the request it takes, and the layout rules for
several persons. The pipeline (and torch) load on first use, so checking a request stays light."""

from dynamicid.generation.layout import automatic_boxes
from dynamicid.generation.request import MAX_OUTPUT_PIXELS, GenerationError, Person, check_request

__all__ = ["DynamicIDPipeline", "GenerationError", "MAX_OUTPUT_PIXELS", "Person", "automatic_boxes", "check_request"]


def __getattr__(name: str) -> object:
    if name == "DynamicIDPipeline":
        from dynamicid.generation.pipeline import DynamicIDPipeline

        return DynamicIDPipeline
    raise AttributeError(name)
