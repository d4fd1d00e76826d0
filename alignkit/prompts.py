"""The one prompt format: how a question becomes the policy's prompt, and where the answer starts.

SFT, DPO, PPO and evaluation all build policy inputs here, so dvc.yaml lists this
file as a dependency of each of those stages: changing it reruns them.

    Question: What is the capital of Italy?
    Answer: The capital of Italy is Rome.<|endoftext|>

The prompt ends at "Answer:"; the answer is the text after it, with a leading
space, followed by the tokenizer's EOS token.
"""

PROMPT_TEMPLATE = "Question: {question}\nAnswer:"


def format_prompt(question):
    return PROMPT_TEMPLATE.format(question=question)


def answer_text(answer):
    """The answer as it follows the prompt (EOS is appended as a token id, not as text)."""
    return " " + answer
