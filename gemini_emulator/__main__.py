"""``python -m gemini_emulator --port PORT --data-dir DIR`` (docs/emulator.md)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .config import EmulatorConfig, Faults
from .models import Catalogue


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gemini_emulator",
        description="Local emulator of the Gemini Batch API (Developer API and Vertex AI).",
    )
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    parser.add_argument(
        "--data-dir", type=Path, required=True, help="where files, jobs and outputs persist across restarts"
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    parser.add_argument(
        "--gcs-endpoint", help="GCS emulator URL (e.g. http://127.0.0.1:9023) for the Vertex surface and gs:// URIs"
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="emulated seconds per real second (3600: an hour passes in a second)",
    )
    parser.add_argument("--faults", help="fault plan: a JSON object or a path to a JSON file (see docs/emulator.md)")
    parser.add_argument(
        "--models",
        type=Path,
        help="the models served: a JSON file like gemini_emulator/models.json (default: that file)",
    )
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.time_scale <= 0:
        parser.error("--time-scale must be positive")
    try:
        faults = Faults.parse(args.faults)
        models = Catalogue.load(args.models)
    except ValueError as exc:
        parser.error(str(exc))

    import uvicorn

    from .app import create_app

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    config = EmulatorConfig(
        data_dir=args.data_dir, time_scale=args.time_scale, gcs_endpoint=args.gcs_endpoint, faults=faults, models=models
    )
    uvicorn.run(
        create_app(config),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.log_level in ("debug", "info"),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
