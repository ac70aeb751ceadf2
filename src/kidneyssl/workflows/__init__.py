"""Workflows that chain the stages into what a user runs: the paper's experiment (prepare,
pretrain, train, score, report) and the demo. They sit above ``reporting`` (they write reports)
and below ``cli`` (which only parses and calls them)."""

from kidneyssl.workflows.experiment import ExperimentResult, run_demo, run_experiment

__all__ = ["ExperimentResult", "run_experiment", "run_demo"]
