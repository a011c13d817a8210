"""Per-step drafter accuracy and the expected accepted length it implies."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DraftAccuracy:
    """Accumulates top-k hits of every drafting step over an evaluation set."""

    num_steps: int
    top_k: int = 5
    targets: list[int] = field(default_factory=list)
    out_of_vocab: list[int] = field(default_factory=list)
    correct: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.targets = [0] * self.num_steps
        self.out_of_vocab = [0] * self.num_steps
        self.correct = [[0] * self.top_k for _ in range(self.num_steps)]

    def update(self, step_counts: list[tuple[int, int, list[int]]]) -> None:
        for step, (targets, oov, correct_at) in enumerate(step_counts):
            self.targets[step] += targets
            self.out_of_vocab[step] += oov
            for k, hits in enumerate(correct_at):
                self.correct[step][k] += hits

    def accuracy(self, step: int, k: int) -> float:
        return self.correct[step][k - 1] / max(self.targets[step], 1)

    def expected_accepted_length(self, k: int = 1) -> float:
        """Tokens per verification step implied by teacher-forced accuracies, bonus token included.

        A single drafted chain is accepted up to its first miss; step s's accuracy is measured given a
        correct prefix, so P(first s tokens accepted) = prod_{j<=s} acc_j and
        E[accepted] = 1 + sum_s prod_{j<=s} acc_j. With k > 1 this is the optimistic value for a drafter
        proposing k candidates per step (a beam/tree of width k).
        """
        expected, survive = 1.0, 1.0
        for step in range(self.num_steps):
            survive *= self.accuracy(step, k)
            expected += survive
        return expected

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        metrics: dict[str, float] = {}
        for step in range(self.num_steps):
            for k in sorted({1, min(5, self.top_k)}):
                metrics[f"{prefix}step{step + 1}_top{k}"] = self.accuracy(step, k)
            if any(self.out_of_vocab):
                metrics[f"{prefix}step{step + 1}_oov"] = self.out_of_vocab[step] / max(self.targets[step], 1)
        metrics[f"{prefix}expected_accepted_length_top1"] = self.expected_accepted_length(1)
        if self.top_k >= 5:
            metrics[f"{prefix}expected_accepted_length_top5"] = self.expected_accepted_length(5)
        return metrics

    def table(self) -> str:
        """Markdown table: one row per drafting step."""
        ks = sorted({1, min(5, self.top_k)})
        header = "| step | targets | " + " | ".join(f"top-{k} acc" for k in ks) + " | OOV |"
        lines = [header, "|" + "---|" * (3 + len(ks))]
        for step in range(self.num_steps):
            accs = " | ".join(f"{self.accuracy(step, k):.3f}" for k in ks)
            oov = self.out_of_vocab[step] / max(self.targets[step], 1)
            lines.append(f"| {step + 1} | {self.targets[step]} | {accs} | {oov:.3f} |")
        lines.append(
            f"\nExpected accepted tokens per step (bonus included): top-1 chain "
            f"{self.expected_accepted_length(1):.2f}"
            + (f", top-5 upper bound {self.expected_accepted_length(5):.2f}" if self.top_k >= 5 else "")
        )
        return "\n".join(lines)
