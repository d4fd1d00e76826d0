"""alignkit: the library behind the DVC stages in stages/.

Kept light on purpose: importing the package imports nothing heavy, so each
stage and test pulls in only the modules it uses.
"""

__version__ = "0.1.0"
