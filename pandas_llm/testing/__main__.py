"""``python -m pandas_llm.testing``: run the test server as a process.

Prints its base URL (``http://127.0.0.1:PORT/v1``) on one line once it accepts
connections, then serves until SIGINT/SIGTERM. ``GET /_testing/stats`` reports its
counters and its process CPU seconds, for benchmarks run from another process.

    python -m pandas_llm.testing --port 8000 --rpm 5000 --tpm 2000000 --latency-ms 50
"""

from __future__ import annotations

import argparse

from .server import LLMServer


def _error_rate(text: str) -> tuple[int, float]:
    status, sep, rate = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected STATUS=RATE, e.g. 500=0.1, got {text!r}")
    return int(status), float(rate)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pandas_llm.testing", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 (default) picks a free port")
    p.add_argument("--latency-ms", type=float, default=0.0, help="added to every chat response")
    p.add_argument("--rpm", type=int, default=None, help="requests per minute")
    p.add_argument("--tpm", type=int, default=None, help="tokens per minute")
    p.add_argument("--window", type=float, default=60.0, help="rate-limit window in seconds (default 60)")
    p.add_argument(
        "--limit-kind",
        choices=("sliding", "quantized", "bucket"),
        default="sliding",
        help="how the limits count: a sliding window, fixed slots of --window seconds, a token bucket",
    )
    p.add_argument(
        "--limit-reset",
        choices=("window", "refill"),
        default="window",
        help="x-ratelimit-reset-*: until the window is whole again, or the refill time of what is used",
    )
    p.add_argument("--rpd", type=int, default=None, help="a per-day request budget reported in the request headers")
    p.add_argument("--api-key", default=None, help="require Authorization: Bearer API_KEY")
    p.add_argument("--error-rate", type=_error_rate, action="append", default=[], metavar="STATUS=RATE")
    p.add_argument("--seed", type=int, default=0, help="seed for --error-rate")
    args = p.parse_args(argv)
    srv = LLMServer(
        host=args.host,
        port=args.port,
        latency=args.latency_ms / 1000,
        rpm=args.rpm,
        tpm=args.tpm,
        window=args.window,
        limit_kind=args.limit_kind,
        limit_reset=args.limit_reset,
        rpd=args.rpd,
        api_key=args.api_key,
        error_rate=dict(args.error_rate),
        seed=args.seed,
    )
    srv.serve_forever(lambda s: print(s.base_url, flush=True))


if __name__ == "__main__":
    main()
