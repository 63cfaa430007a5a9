import sys

from resnet_repro.analysis.cli import main
from resnet_repro.files import utf8_console

utf8_console()
sys.exit(main())
