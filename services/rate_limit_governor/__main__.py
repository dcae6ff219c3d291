"""python -m services.rate_limit_governor"""

import asyncio

from services.common.logging import configure_logging, secrets_of
from services.common.telemetry import setup_telemetry
from services.rate_limit_governor.app import serve
from services.rate_limit_governor.settings import GovernorSettings

settings = GovernorSettings()
configure_logging(settings.telemetry, service_name=settings.service_name, secrets=secrets_of(settings))
telemetry = setup_telemetry(settings.telemetry, service_name=settings.service_name)
telemetry.serve_metrics(settings.telemetry.metrics_port)
asyncio.run(serve(settings, metrics=telemetry.metrics))
