"""The reference's training command, as typed:

    python main.py -b 256 --ds casiam --bits 32 --model res18 --comment caRes32 --epoch 4000

Same flags as `palm-export train`; see `python main.py --help`.
"""

import sys

from export.train import main

if __name__ == "__main__":
    sys.exit(main())
