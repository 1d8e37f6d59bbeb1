"""`python -m services.crm_export [--port N]`: this service alone, as its container runs it."""

from services.common.service import main_for, serve

if __name__ == "__main__":
    from services.crm_export.app import DEFINITION

    raise SystemExit(main_for(DEFINITION.name, lambda settings, port: serve(DEFINITION, settings, port=port)))
