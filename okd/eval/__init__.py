"""Layer 6: ROUGE-L, exposure bias (ExAccErr), teacher-forced analyses, reports.

Generation itself lives in okd.generation (training's on-policy methods use it too).
"""

from okd.eval.exposure import exacc_err, exacc_err_curve, exposure_bias
from okd.eval.rouge import rouge_l, rouge_l_per_example
from okd.eval.runner import quick_rouge, run_analysis, run_eval, score_predictions
from okd.eval.teacher_forced import teacher_forced_stats

__all__ = [
    "exacc_err", "exacc_err_curve", "exposure_bias", "quick_rouge", "rouge_l", "rouge_l_per_example",
    "run_analysis", "run_eval", "score_predictions", "teacher_forced_stats",
]
