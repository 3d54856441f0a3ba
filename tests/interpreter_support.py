"""A real TFLite interpreter behind a wrapper, for tests that change only what ``invoke`` does, and a
clock such tests move by hand."""

from __future__ import annotations

from typing import Any

from device.models.interpreter import Interpreter


class ForwardingInterpreter:
    """Passes every call to the real interpreter; subclasses override ``invoke``."""

    def __init__(self, inner: Interpreter) -> None:
        self._inner = inner

    def allocate_tensors(self) -> None:
        self._inner.allocate_tensors()

    def get_input_details(self) -> list[dict[str, Any]]:
        return self._inner.get_input_details()

    def get_output_details(self) -> list[dict[str, Any]]:
        return self._inner.get_output_details()

    def set_tensor(self, tensor_index: int, value: Any) -> None:
        self._inner.set_tensor(tensor_index, value)

    def invoke(self) -> None:
        self._inner.invoke()

    def get_tensor(self, tensor_index: int) -> Any:
        return self._inner.get_tensor(tensor_index)


class ManualClock:
    """A monotonic clock that moves only when the test (or a wrapped interpreter) moves ``now``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now
