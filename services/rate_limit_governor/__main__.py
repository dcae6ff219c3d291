"""python -m services.rate_limit_governor"""

from services.common.service import main
from services.rate_limit_governor.app import run
from services.rate_limit_governor.settings import GovernorSettings

main(GovernorSettings, run)
