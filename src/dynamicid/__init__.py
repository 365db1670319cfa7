"""DynamicID: identity-preserving multi-person image personalization.

Layout follows the data flow:
  faces/       face analysis shared by prep, generation and eval
  prep/        the Spark face-data pipeline
  models/      DynamicID model parts (face encoder, SAA, IMR, KeyPointEncoder)
  training/    two-stage training
  pipeline/    generation
  evaluation/  scoring generated images
  cli.py       the one command line
"""

__version__ = "0.1.0"
