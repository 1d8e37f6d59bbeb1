"""`python -m services.customer [serve] [--port N]`: this service alone, as its container runs it;
`python -m services.customer migrate`: its schema to the latest migration (the migration step)."""

from services.common.service import ServiceDefinition, main_for_service

if __name__ == "__main__":

    def definition() -> ServiceDefinition:
        from services.customer.app import DEFINITION

        return DEFINITION

    raise SystemExit(main_for_service(definition, prog="python -m services.customer"))
