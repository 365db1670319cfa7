"""`dynamicid prep`: the Spark face-data pipeline.

discover -> (Spark partitions) -> decode/validate -> face analysis -> write outputs -> manifest,
then a summary and a contact sheet on the driver.
"""

from dynamicid.prep.config import PrepConfig

__all__ = ["PrepConfig", "run_prep"]


def run_prep(config: PrepConfig, spark=None):
    from dynamicid.prep.runner import run_prep as _run

    return _run(config, spark=spark)
