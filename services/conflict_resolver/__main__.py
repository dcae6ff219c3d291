"""python -m services.conflict_resolver"""

from services.common.service import main
from services.conflict_resolver.app import run
from services.conflict_resolver.settings import ResolverSettings

main(ResolverSettings, run)
