"""Emulator settings: time scale and the seeded fault plan."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from .models import Catalogue

HOUR = 3600.0

# gRPC status names for the codes a row error or an HTTP error can carry.
STATUS_NAMES = {
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
}

HTTP_ENDPOINTS = (
    "generate",
    "create",
    "get",
    "list",
    "cancel",
    "delete",
    "upload",
    "download",
    "file_get",
    "file_list",
)


@dataclasses.dataclass
class HttpFault:
    """HTTP errors on one endpoint: the first ``burst`` calls, then a ``rate``."""

    rate: float = 0.0
    burst: int = 0
    codes: tuple[int, ...] = (429, 503)


@dataclasses.dataclass
class Faults:
    """What goes wrong, and how slowly things happen, in emulated seconds.

    Every decision is a pure function of ``seed`` and a stable identity (row
    key and attempt, job ordinal, call ordinal), so a run repeats exactly.
    """

    seed: int = 0
    # per row
    row_error_rate: float = 0.0
    row_error_codes: tuple[int, ...] = (4, 9, 13, 429)
    fenced_rate: float = 0.0
    prose_rate: float = 0.0
    truncated_rate: float = 0.0
    safety_rate: float = 0.0
    recitation_rate: float = 0.0
    missing_rate: float = 0.0
    corrupt_rate: float = 0.0  # an output line cut off mid-way (a damaged file), still counted as answered
    # per job
    job_fail_rate: float = 0.0
    job_expire_rate: float = 0.0
    stuck_pending_rate: float = 0.0
    partial_fraction: float = 0.5
    # HTTP errors per endpoint
    http: dict[str, HttpFault] = dataclasses.field(default_factory=dict)
    # latencies (emulated seconds) and limits
    pending_seconds: float = 1.0
    running_seconds: float = 1.0
    row_seconds: float = 0.0
    file_processing_seconds: float = 0.0  # documents and JSONL are usable when the upload returns
    media_processing_seconds: float = 2.0  # video and audio: the service processes them first
    request_latency_ms: float = 0.0  # real (not time-scaled) delay before each API request: a network round trip
    job_expiry_hours: float = 48.0  # Developer API: pending or running longer ends EXPIRED, no results
    vertex_queue_hours: float = 72.0  # Vertex AI: queued longer ends EXPIRED, no results
    vertex_run_hours: float = 24.0  # Vertex AI: running longer ends EXPIRED, the finished rows exported
    online_rpm: int = 0  # online requests (generateContent) per model per emulated minute (0: no limit); over it: 429
    enqueued_token_limit: int = 0  # tokens the active jobs of one model may hold (0: no limit); over it: 429
    file_ttl_hours: float = 48.0
    max_input_bytes: int = 2 * 1024**3
    max_inline_bytes: int = 20 * 1024**2
    max_requests: int = 200_000
    files_storage_bytes: int = 20 * 1024**3
    api_keys: tuple[str, ...] = ()  # the Developer API keys accepted (empty: any); another is answered API_KEY_INVALID

    @classmethod
    def parse(cls, spec: str | None) -> Faults:
        """Read a JSON object, or a path to a file holding one."""
        if not spec:
            return cls()
        text = spec
        if not spec.lstrip().startswith("{"):
            path = Path(spec)
            if not path.is_file():
                raise ValueError(f"--faults: {spec!r} is neither a JSON object nor a file")
            text = path.read_text()
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--faults: invalid JSON: {exc}") from None
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Faults:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"--faults: unknown setting(s) {unknown}; known: {sorted(known)}")
        values = dict(raw)
        if "row_error_codes" in values:
            values["row_error_codes"] = tuple(int(c) for c in values["row_error_codes"])
        if "api_keys" in values:
            values["api_keys"] = tuple(str(k) for k in values["api_keys"])
        http = {}
        for endpoint, fault in (values.get("http") or {}).items():
            if endpoint not in HTTP_ENDPOINTS:
                raise ValueError(f"--faults: unknown endpoint {endpoint!r}; known: {HTTP_ENDPOINTS}")
            if not isinstance(fault, dict):
                raise ValueError(
                    f"--faults: http.{endpoint} must be an object with rate, burst and codes; got {fault!r}"
                )
            allowed = {f.name for f in dataclasses.fields(HttpFault)}
            bad = sorted(set(fault) - allowed)
            if bad:
                raise ValueError(f"--faults: unknown setting(s) {bad} in http.{endpoint}; known: {sorted(allowed)}")
            fault = dict(fault)
            if "codes" in fault:
                fault["codes"] = tuple(int(c) for c in fault["codes"])
            http[endpoint] = HttpFault(**fault)
        values["http"] = http
        return cls(**values)

    def chance(self, *identity: object) -> float:
        """A uniform number in [0, 1) fixed by the seed and ``identity``."""
        digest = hashlib.sha256(repr((self.seed, *identity)).encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def pick(self, options: tuple[Any, ...], *identity: object) -> Any:
        return options[int(self.chance("pick", *identity) * len(options))]


@dataclasses.dataclass
class EmulatorConfig:
    data_dir: Path
    time_scale: float = 1.0
    gcs_endpoint: str | None = None
    faults: Faults = dataclasses.field(default_factory=Faults)
    models: Catalogue = dataclasses.field(default_factory=Catalogue.load)

    def real_seconds(self, emulated_seconds: float) -> float:
        """How long ``emulated_seconds`` of service time take on the wall clock."""
        return emulated_seconds / self.time_scale


class HttpFaultInjector:
    """Counts calls per endpoint and decides, deterministically, which fail."""

    def __init__(self, faults: Faults):
        self._faults = faults
        self._calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def error_for(self, endpoint: str) -> int | None:
        fault = self._faults.http.get(endpoint)
        if fault is None:
            return None
        with self._lock:
            n = self._calls.get(endpoint, 0)
            self._calls[endpoint] = n + 1
        if n < fault.burst or self._faults.chance("http", endpoint, n) < fault.rate:
            return self._faults.pick(fault.codes, "http", endpoint, n)
        return None
