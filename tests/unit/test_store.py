"""The in-memory run store keeps the store contract (the Table backend: tests/integration)."""

from __future__ import annotations

import pytest

from shared.rollout.store.memory import MemoryRunStore
from tests.store_contract import StoreContract


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self) -> MemoryRunStore:
        return MemoryRunStore()
