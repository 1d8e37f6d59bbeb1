"""A toy fourth service, `ledger`, that exists only for tests/roster: registered through the
registry's seam (`services.registry.PACKAGES`), it shows every derived list picking it up."""
