import sys

from distracer.cli import main

sys.exit(main())
