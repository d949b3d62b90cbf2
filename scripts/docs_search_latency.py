"""Document search latency at 1k, 10k and 100k stored chunks, on SQLite and PostgreSQL.

    .venv/bin/python scripts/docs_search_latency.py [--sizes 1000,10000,100000] [--queries 200] [--no-postgres]

A thin wrapper: the measurement is `nanochat_lite.bench.docs_search` (what is timed, the
synthetic chunks, the throwaway PostgreSQL cluster), also run by
`nanochat-lite bench --sections documents`, which prints it beside the previous figures.
"""

from __future__ import annotations

import argparse
import sys

from nanochat_lite.bench import docs_search


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, docs_search.SIZES)))
    parser.add_argument("--queries", type=int, default=docs_search.QUERIES)
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args()
    r = docs_search.run([int(s) for s in args.sizes.split(",")], args.queries, postgres=not args.no_postgres)
    print(f"{'store':<11}{'chunks':>8}{'p50 ms':>9}{'p95 ms':>9}{'load s':>8}{'fill s':>8}")
    for store in ("sqlite", "postgresql"):
        if isinstance(r[store], str):
            print(f"{store:<11}{r[store]}")
            continue
        for n, row in r[store].items():
            print(f"{store:<11}{int(n):>8}{row['p50']:>9.2f}{row['p95']:>9.2f}{row['load_s']:>8.2f}"
                  f"{row['fill_s']:>8.1f}")
    print(f"load average {r['load_average_start']} at start, {r['load_average_end']} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
