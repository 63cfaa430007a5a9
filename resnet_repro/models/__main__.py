import sys

from resnet_repro.files import utf8_console
from resnet_repro.models.summary import main

utf8_console()
sys.exit(main())
