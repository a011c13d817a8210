"""`python -m drafter.training ...` = `python train_speculator.py ...`."""

from .cli import main

main()
