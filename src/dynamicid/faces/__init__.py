"""Face analysis shared by prep, generation and eval: detection, landmarks, alignment, pose,
expression, face prompt and identity embedding. Backends live in `faces.backends`."""

from dynamicid.faces.analyzer import FaceAnalysisConfig, FaceAnalyzer, FaceRules, cosine_similarity
from dynamicid.faces.types import ExpressionCues, FaceAnalysis, FaceBox, HeadPose

__all__ = [
    "ExpressionCues",
    "FaceAnalysis",
    "FaceAnalysisConfig",
    "FaceAnalyzer",
    "FaceBox",
    "FaceRules",
    "HeadPose",
    "cosine_similarity",
]
