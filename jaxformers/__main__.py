import sys

from jaxformers.cli import main

sys.exit(main())
