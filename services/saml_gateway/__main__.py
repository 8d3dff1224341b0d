"""``python -m saml_gateway``: settings, logging, serve until SIGTERM/SIGINT."""

from provisio_lib.process import serve_http, start, startup_errors_exit

from .settings import SamlSettings


def main() -> None:
    settings = start(SamlSettings, "saml_gateway")
    with startup_errors_exit("saml_gateway"):
        from .app import create_app

        app = create_app(settings)
    # In-flight logins wait for their outcome; give them time to finish.
    serve_http(
        app,
        host=settings.saml_host,
        port=settings.saml_port,
        shutdown_timeout=15,
        service="saml_gateway",
        event_loop=settings.event_loop,
        young_gc=None,
    )


if __name__ == "__main__":
    main()
