"""python -m services.mapping"""

from services.common.service import main
from services.mapping.app import run
from services.mapping.settings import MappingSettings

main(MappingSettings, run)
