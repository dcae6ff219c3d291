"""python -m services.writer"""

from services.common.service import main
from services.writer.app import run
from services.writer.settings import WriterSettings

main(WriterSettings, run)
