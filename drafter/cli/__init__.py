"""Command lines that sit on several layers (`generate_speculator.py`'s: chat, answers, the speed comparison)."""
