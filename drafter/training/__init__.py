"""Drafter training: the HfArgumentParser arguments, the losses, the Trainer subclass and the train/eval job
(`python -m drafter.training`, `train_speculator.py`)."""
