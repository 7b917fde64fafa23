"""How fast ``gridwatch simulate`` writes a city to file: readings per second, by city size.

    python benchmarks/simulate_speed.py                        # 10,000 and 100,000 meters, 1 day, JSONL
    python benchmarks/simulate_speed.py --meters 100000 --to jsonl jsonl.gz parquet null

``null`` builds and encodes every record but writes nothing (the generator's own cost). The
output goes to a temporary directory that is removed afterwards. Progress bars are off.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulator.files import JsonlSink, ParquetSink  # noqa: E402
from simulator.run import Sink, simulate  # noqa: E402
from simulator.stream import Delivery  # noqa: E402
from simulator.synth import Sim, SimSpec  # noqa: E402


class NullSink:
    def open(self, sim: Sim) -> None:
        pass

    def write(self, batch: Sequence[Delivery]) -> None:
        pass

    def close(self) -> None:
        pass


def sink_for(to: str, out: Path) -> Sink:
    if to == "null":
        return NullSink()
    if to == "parquet":
        return ParquetSink(out / "readings.parquet")
    return JsonlSink(out / f"readings.{to}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--meters", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--days", type=float, default=1.0)
    parser.add_argument(
        "--to", nargs="+", default=["jsonl"], choices=["jsonl", "jsonl.gz", "parquet", "null"]
    )
    parser.add_argument("--single", action="store_true", help="single readings instead of batches")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    head = (
        ("meters", 9),
        ("days", 5),
        ("to", 9),
        ("readings", 11),
        ("records", 9),
        ("seconds", 8),
        ("readings/s", 11),
    )
    print(" ".join(f"{name:>{width}}" for name, width in head), f"{'MB':>7}")
    for meters in args.meters:
        for to in args.to:
            spec = SimSpec(seed=args.seed, meters=meters, days=args.days, batches=not args.single)
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp)
                summary = simulate(spec, out, sink_for(to, out))
                size = sum(p.stat().st_size for p in out.glob("readings.*")) / 1e6
            print(
                f"{meters:>9,} {args.days:>5g} {to:>9} {summary.readings:>11,} {summary.messages:>9,} "
                f"{summary.seconds:>8.1f} {summary.readings_per_s:>11,.0f} {size:>7,.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
