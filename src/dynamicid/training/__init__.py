"""Two-stage training on prep's output: `anchor` (face encoder, SAA's ID projections, LoRA) then
`reconfig` (IMR and the KeyPointEncoder)."""

from dynamicid.training.config import AnchorConfig, ReconfigConfig

__all__ = ["AnchorConfig", "ReconfigConfig"]
