"""Shared test helpers: torch references, tiny builders, numerics, toy runs, launch set-up."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
