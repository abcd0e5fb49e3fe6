import os

# Before torch loads libgomp (see tests/sft/conftest.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
