"""`python -m gateway`: the same as `syncmesh gateway`."""

from syncmesh.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["gateway"]))
