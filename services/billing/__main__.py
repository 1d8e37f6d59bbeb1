from syncmesh.cli import main

raise SystemExit(main(["serve", "billing"]))
