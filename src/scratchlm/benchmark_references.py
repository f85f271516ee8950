"""Published figures for standard lm-eval tasks, shown beside a run's own in report.md, and chance levels.

Every figure names where it was published. Only figures found in a source are here: none is estimated,
and a model or task without a sourced figure is simply absent. `shots` is the number of few-shot examples
the figure was measured with; the report shows a figure only beside a result with the same count, since
10-shot and 0-shot HellaSwag are not the same measurement.

The same model scores differently under different scoring code (issue 2159 of lm-evaluation-harness: GPT-2
124M's LAMBADA accuracy is 0.4599 in the GPT-2 paper and 0.3256 through lm-eval), so the figures measured
with lm-eval come first and the rest say how they differ.
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCES = {
    "llmc": "lm-evaluation-harness figures quoted in karpathy/llm.c, dev/data/hellaswag.py (its module "
    "docstring; the file's own completion-style scoring gives 124M acc_norm 0.2955, not lm-eval's protocol)",
    "lmeval-2159": "EleutherAI/lm-evaluation-harness issue 2159 (lm-eval 0.4, `--model hf "
    "pretrained=openai-community/gpt2 --tasks lambada_openai`)",
    "gpt2023": "crumb/gpt2023 model card on the Hugging Face Hub, its lm-evaluation-harness table, row "
    "'gpt2 (124m)' (its LAMBADA figures agree with lm-eval issue 2159's)",
    "gptj": "kingoflolz/mesh-transformer-jax README, 'Zero-Shot Evaluations' table (lm-evaluation-harness, "
    "run by Leo Gao for GPT-J-6B's release, 2021)",
    "gpt2-paper": "Radford et al. 2019, 'Language Models are Unsupervised Multitask Learners', Table 3 "
    "(OpenAI's own LAMBADA scoring with de-tokenizers: higher than lm-eval's for the same model)",
    "open-llm-v1": "Open LLM Leaderboard (v1), as recorded in the openai-community/gpt2 and gpt2-large "
    "model cards' model-index on the Hugging Face Hub",
}


@dataclass(frozen=True)
class Reference:
    model: str
    task: str  # lm-eval's task name
    metric: str  # lm-eval's metric name, as eval.json records it
    value: float
    shots: int
    source: str  # a key of SOURCES


_R = Reference
REFERENCES: tuple[Reference, ...] = (
    # HellaSwag (validation, 10,042 questions, 4 endings)
    _R("GPT-2 124M", "hellaswag", "acc", 0.2892, 0, "llmc"),
    _R("GPT-2 124M", "hellaswag", "acc_norm", 0.3114, 0, "llmc"),
    _R("GPT-2 1.5B", "hellaswag", "acc", 0.4004, 0, "llmc"),
    _R("GPT-2 1.5B", "hellaswag", "acc_norm", 0.5089, 0, "llmc"),
    _R("GPT-2 124M", "hellaswag", "acc_norm", 0.3153, 10, "open-llm-v1"),
    _R("GPT-2 774M", "hellaswag", "acc_norm", 0.4562, 10, "open-llm-v1"),
    # LAMBADA (OpenAI's version, lm-eval's lambada_openai)
    _R("GPT-2 124M", "lambada_openai", "acc", 0.3256, 0, "lmeval-2159"),
    _R("GPT-2 124M", "lambada_openai", "perplexity", 40.0554, 0, "lmeval-2159"),
    _R("GPT-2 1.5B", "lambada_openai", "acc", 0.5121, 0, "gptj"),
    _R("GPT-2 1.5B", "lambada_openai", "perplexity", 10.63, 0, "gptj"),
    _R("GPT-2 124M (paper)", "lambada_openai", "acc", 0.4599, 0, "gpt2-paper"),
    _R("GPT-2 124M (paper)", "lambada_openai", "perplexity", 35.13, 0, "gpt2-paper"),
    _R("GPT-2 355M (paper)", "lambada_openai", "acc", 0.5548, 0, "gpt2-paper"),
    _R("GPT-2 355M (paper)", "lambada_openai", "perplexity", 15.60, 0, "gpt2-paper"),
    _R("GPT-2 774M (paper)", "lambada_openai", "acc", 0.6012, 0, "gpt2-paper"),
    _R("GPT-2 774M (paper)", "lambada_openai", "perplexity", 10.87, 0, "gpt2-paper"),
    _R("GPT-2 1.5B (paper)", "lambada_openai", "acc", 0.6324, 0, "gpt2-paper"),
    _R("GPT-2 1.5B (paper)", "lambada_openai", "perplexity", 8.63, 0, "gpt2-paper"),
    # PIQA, WinoGrande, SciQ
    _R("GPT-2 124M", "piqa", "acc", 0.6289, 0, "gpt2023"),
    _R("GPT-2 124M", "winogrande", "acc", 0.5161, 0, "gpt2023"),
    _R("GPT-2 1.5B", "winogrande", "acc", 0.594, 0, "gptj"),
    _R("GPT-2 124M", "sciq", "acc", 0.750, 0, "gpt2023"),
    # The Open LLM Leaderboard's few-shot settings
    _R("GPT-2 124M", "arc_challenge", "acc_norm", 0.2201, 25, "open-llm-v1"),
    _R("GPT-2 774M", "arc_challenge", "acc_norm", 0.2577, 25, "open-llm-v1"),
    _R("GPT-2 774M", "mmlu", "acc", 0.2607, 5, "open-llm-v1"),
    _R("GPT-2 774M", "truthfulqa_mc2", "acc", 0.3872, 0, "open-llm-v1"),
)

# 1 / the number of answer choices: the accuracy of guessing. A multiple-choice task that runs reports its
# own (benchmarks.py counts the choices of its questions); this table covers results recorded without one.
CHANCE = {
    "hellaswag": 0.25,
    "arc_easy": 0.25,  # most ARC questions have 4 choices, a few 3 or 5
    "arc_challenge": 0.25,
    "openbookqa": 0.25,
    "sciq": 0.25,
    "mmlu": 0.25,
    "piqa": 0.5,
    "winogrande": 0.5,
    "boolq": 0.5,
    "copa": 0.5,
    "ja_leaderboard_jcommonsenseqa": 0.2,
}
CHANCE_METRICS = ("acc", "acc_norm")


def references_for(task: str, metric: str, shots: int | None) -> list[Reference]:
    """The published figures for a task's metric measured with the same number of few-shot examples (None:
    the task's default, 0 for every task listed here)."""
    shots = shots or 0
    return [r for r in REFERENCES if r.task == task and r.metric == metric and r.shots == shots]
