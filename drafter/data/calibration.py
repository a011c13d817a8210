"""Calibration prompts for measuring a drafter's acceptance before a run (`--tree_budget auto`): everyday chat
requests written for this project, so they are neither MT-Bench questions (the benchmark stays held out) nor
ShareGPT conversations (a drafter's training data, on which acceptance would look better than it is)."""

CALIBRATION_PROMPTS = (
    "Explain in a few paragraphs how a refrigerator keeps food cold.",
    "Write a short, friendly email asking a colleague to review my project proposal by Friday.",
    "What are three practical tips for someone learning to cook at home? Explain each one.",
    "Describe the water cycle to a ten-year-old.",
    "Write a Python function that returns the n-th Fibonacci number, and explain how it works.",
    "Give me a plan for a relaxing weekend in a small coastal town.",
)
