"""`python -m gateway [--port N]`: the webhook gateway alone, as its container runs it."""

from gateway.deployable import GATEWAY
from services.common.service import main_for

if __name__ == "__main__":
    from gateway.app import serve

    raise SystemExit(main_for(GATEWAY.name, lambda settings, port: serve(settings, port=port)))
