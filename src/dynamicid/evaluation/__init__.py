"""`dynamicid eval`: identity similarity, face-prompt agreement and multi-person leakage.

inputs (sidecars, CSV, JSON) -> scoring (same face code as prep) -> scores.parquet, summary.json,
report.html and report.png.
"""

from dynamicid.evaluation.config import EvalConfig

__all__ = ["EvalConfig", "run_eval"]


def run_eval(config: EvalConfig):
    from dynamicid.evaluation.runner import run_eval as _run

    return _run(config)
