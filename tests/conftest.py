"""What every test shares: Ctrl-C delivered as at a terminal.

A test run started in the background of a non-interactive shell (``cmd &``, ``nohup``) inherits
SIGINT ignored, and Python then raises no KeyboardInterrupt; the tests that send Ctrl-C to a
training run or an export, in this process or to a child, would see nothing happen. A child
inherits an ignored signal but not a handler, so restoring Python's handler here serves both.
"""

import signal

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
