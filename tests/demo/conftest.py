"""The demo catalogue is built once per test process and shared by the demo tests."""

from __future__ import annotations

import time

import pytest

from cyxwiz.demo.models import DemoModel, build_demo_models

Built = tuple[list[DemoModel], list[tuple[int, int, str]], float]


@pytest.fixture(scope="session")
def built() -> Built:
    calls: list[tuple[int, int, str]] = []
    start = time.perf_counter()
    models = build_demo_models(progress=lambda done, total, name: calls.append((done, total, name)))
    return models, calls, time.perf_counter() - start
