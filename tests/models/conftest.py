"""Fixtures for the model tests: the paper and demo model configs."""

from __future__ import annotations

import pytest

from kidneyssl.config import ModelConfig, load_preset


@pytest.fixture(scope="session")
def paper_cfg() -> ModelConfig:
    return load_preset("paper").model


@pytest.fixture(scope="session")
def demo_cfg() -> ModelConfig:
    return load_preset("demo").model
