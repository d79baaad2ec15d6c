"""Experiments: the run folder, cross-validation of any method, summaries over folds and reports."""
