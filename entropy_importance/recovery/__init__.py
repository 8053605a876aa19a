"""Recovery without training: repair a pruned network's weights from calibration data (:func:`recover`).

Below the engine, beside the criteria and the repairs: ``prune(recover=...)``, the pipelines (after every stage)
and the CLI (``--recover``) call :func:`recover`; it also follows any Torch-Pruning pipeline
(``recover(original, pruned, data, history=pruner)``).
"""

from .batchnorm import reestimate_batchnorm
from .channels import KeptChannels, kept_channels
from .least_squares import NormalEquations
from .reconstruct import reconstruct
from .recover import METHODS, RIDGES, check_method, recover
from .report import LayerRecovery, RecoveryReport

__all__ = ["recover", "METHODS", "RIDGES", "check_method", "RecoveryReport", "LayerRecovery", "reestimate_batchnorm",
           "reconstruct", "kept_channels", "KeptChannels", "NormalEquations"]
