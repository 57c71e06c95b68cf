"""Telling known from unknown: scores fitted on known images, measured by AUROC and FPR95."""
