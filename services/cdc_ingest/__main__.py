"""python -m services.cdc_ingest"""

import asyncio
import sys

from services.cdc_ingest.app import build_app
from services.cdc_ingest.settings import CdcIngestSettings
from services.common.kafka import run_service
from services.common.logging import configure_logging, secrets_of
from services.common.telemetry import setup_telemetry

settings = CdcIngestSettings()
configure_logging(settings.telemetry, service_name=settings.service_name, secrets=secrets_of(settings))
telemetry = setup_telemetry(settings.telemetry, service_name=settings.service_name)
telemetry.serve_metrics(settings.telemetry.metrics_port)
service = build_app(settings, telemetry=telemetry)
sys.exit(asyncio.run(run_service(service.app, service.kafka.halt)))
