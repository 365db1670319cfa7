"""`dynamicid collect`: photos from URL lists, downloaded on Spark, a status for every URL."""

from dynamicid.collect.config import CollectConfig
from dynamicid.collect.runner import CollectResult, run_collect

__all__ = ["CollectConfig", "CollectResult", "run_collect"]
