"""python -m services.writer"""

import asyncio
import os
import sys

from services.common.logging import configure_logging, secrets_of
from services.common.salesforce import env_secrets
from services.common.telemetry import setup_telemetry
from services.writer.app import serve
from services.writer.settings import WriterSettings

settings = WriterSettings()
configure_logging(settings.telemetry, service_name=settings.service_name, secrets=secrets_of(settings))
telemetry = setup_telemetry(settings.telemetry, service_name=settings.service_name)
telemetry.serve_metrics(settings.telemetry.metrics_port)
# Tenants' Salesforce secrets arrive as environment variables (Kubernetes Secrets included).
sys.exit(asyncio.run(serve(settings, secrets=env_secrets(os.environ), telemetry=telemetry)))
