import sys

from export.demo.run import main

sys.exit(main())
