"""`python -m services.customer [--port N]`: this service alone, as its container runs it."""

from services.common.service import main_for, serve

if __name__ == "__main__":
    from services.customer.app import DEFINITION

    raise SystemExit(main_for(DEFINITION.name, lambda settings, port: serve(DEFINITION, settings, port=port)))
