"""Generation: `DynamicIDPipeline` (diffusers-style) and the layout rules for several persons."""

from dynamicid.pipeline.layout import automatic_boxes
from dynamicid.pipeline.pipeline import DynamicIDPipeline, GenerationError, Person

__all__ = ["DynamicIDPipeline", "GenerationError", "Person", "automatic_boxes"]
