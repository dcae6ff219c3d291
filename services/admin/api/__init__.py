"""The admin HTTP API: :func:`services.admin.api.application.build_api` assembles it."""
