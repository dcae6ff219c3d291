"""python -m services.salesforce_emulator"""

from services.common.service import main
from services.salesforce_emulator.app import run
from services.salesforce_emulator.cli import command_line

command_line(lambda load_settings: main(load_settings, run))()
