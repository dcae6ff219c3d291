"""python -m services.cdc_ingest"""

from services.cdc_ingest.app import run
from services.cdc_ingest.settings import CdcIngestSettings
from services.common.service import main

main(CdcIngestSettings, run)
