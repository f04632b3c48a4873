import sys

from mnist_lab.cli import main

sys.exit(main())
