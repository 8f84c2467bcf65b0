import sys

from wfvae.cli import main

sys.exit(main())
