"""`python -m gateway [--port N]`: the webhook gateway alone, as its container runs it."""

from services.common.service import main_for

if __name__ == "__main__":
    from gateway.app import serve

    raise SystemExit(main_for("gateway", lambda settings, port: serve(settings, port=port)))
