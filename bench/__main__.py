"""`python -m bench`: the benchmark suite (see bench/README.md)."""

from bench.runner import main

if __name__ == "__main__":
    raise SystemExit(main())
