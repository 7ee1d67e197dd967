"""Prometheus counters and histograms in the text exposition format, with no extra dependency."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable

from encoderfile.runtime.serve.kinds import kind_of

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def error_kind(exc: BaseException) -> str:
    """The `kind` label of encoderfile_errors_total: the error kind of kinds.KINDS."""
    return kind_of(exc).name


_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

Labels = tuple[tuple[str, str], ...]


def _labels(pairs: Labels) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Counter:
    def __init__(self, name: str, help_text: str, lock: threading.Lock):
        self.name, self.help, self._lock = name, help_text, lock
        self._values: dict[Labels, float] = {}

    def inc(self, amount: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(tuple(sorted(labels.items())), 0)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for key, value in sorted(self._values.items()):
            yield f"{self.name}{_labels(key)} {_number(value)}"


class Histogram:
    """Cumulative buckets, sum and count per label set (none by default)."""

    def __init__(self, name: str, help_text: str, lock: threading.Lock, buckets: tuple[float, ...]):
        self.name, self.help, self._lock, self._buckets = name, help_text, lock, buckets
        self._series: dict[Labels, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = ([0] * (len(self._buckets) + 1), [0.0])
            counts, total = series
            counts[bisect.bisect_left(self._buckets, value)] += 1
            total[0] += value

    def count(self, **labels: str) -> int:
        with self._lock:
            series = self._series.get(tuple(sorted(labels.items())))
            return sum(series[0]) if series else 0

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        series = self._series or {(): ([0] * (len(self._buckets) + 1), [0.0])}
        for key, (counts, total) in sorted(series.items()):
            seen = 0
            for bound, count in zip((*self._buckets, float("inf")), counts, strict=True):
                seen += count
                le = "+Inf" if bound == float("inf") else _number(bound)
                yield f"{self.name}_bucket{_labels((*key, ('le', le)))} {seen}"
            yield f"{self.name}_sum{_labels(key)} {_number(total[0])}"
            yield f"{self.name}_count{_labels(key)} {seen}"


class Gauge:
    def __init__(self, name: str, help_text: str, read: Callable[[], float]):
        self.name, self.help, self._read = name, help_text, read

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        yield f"{self.name} {_number(self._read())}"


class Metrics:
    """Everything the server exports on GET /metrics; safe to update from any thread."""

    def __init__(self) -> None:
        lock = threading.Lock()
        self._lock = lock
        self.requests = Counter(
            "encoderfile_requests_total", "Requests by transport, route and status.", lock
        )
        self.errors = Counter(
            "encoderfile_errors_total",
            "Failed requests by transport, route and error kind (HTTP's error type).",
            lock,
        )
        self.inputs = Counter("encoderfile_inputs_total", "Texts embedded.", lock)
        self.tokens = Counter("encoderfile_tokens_total", "Tokens embedded.", lock)
        self.cancelled = Counter(
            "encoderfile_cancelled_inputs_total",
            "Inputs dropped from the queue because their client went away.",
            lock,
        )
        self.request_seconds = Histogram(
            "encoderfile_request_seconds",
            "Time from request to response, by transport and route.",
            lock,
            _SECONDS,
        )
        self.queue_seconds = Histogram(
            "encoderfile_queue_seconds", "Time a request waited for its batch.", lock, _SECONDS
        )
        self.inference_seconds = Histogram(
            "encoderfile_inference_seconds", "Time of one model call.", lock, _SECONDS
        )
        self.batch_inputs = Histogram(
            "encoderfile_batch_inputs", "Texts per model call.", lock, _SIZES
        )
        self._gauges: list[Gauge] = []

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self._gauges.append(Gauge(name, help_text, read))

    def render(self) -> str:
        families: list[Counter | Histogram] = [
            self.requests,
            self.errors,
            self.inputs,
            self.tokens,
            self.cancelled,
            self.request_seconds,
            self.queue_seconds,
            self.inference_seconds,
            self.batch_inputs,
        ]
        lines: list[str] = []
        with self._lock:
            for family in families:
                lines.extend(family.render())
        for gauge in self._gauges:
            lines.extend(gauge.render())
        return "\n".join(lines) + "\n"
