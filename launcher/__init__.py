"""The `syncmesh` command: run the whole mesh on one machine (`up`), one deployable, or a tool.

The top floor of the house: it may import every other package (runtime, gateway, services,
operator tools); nothing imports it.
"""
