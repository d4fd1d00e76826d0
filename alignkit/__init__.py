"""alignkit: the library behind the DVC stages in stages/.

Kept light on purpose: importing the package imports nothing heavy, so each
stage and test pulls in only the modules it uses.
"""

__version__ = "0.1.0"

import logging

# peft imports bitsandbytes whenever it is installed; on a CPU with AVX-512 BF16, bitsandbytes then looks for
# an optional kernel that only the Hugging Face hub serves and warns at every start that the `kernels`
# package is missing. Its own built-in kernel, which it falls back to, is the one this project uses.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
