import os
import sys

# Tests import helper modules (e.g. surprise_oracle) that live beside them.
sys.path.insert(0, os.path.dirname(__file__))
