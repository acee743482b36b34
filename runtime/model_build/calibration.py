"""The built-in calibration set ("byoc-builtin"): text that ships with byoc, for accounts without internet.

Quantization calibrates activation ranges (and FP8 KV-cache scales) on sample inputs. ModelOpt's examples use
cnn_dailymail or a chat dataset downloaded from the Hub; a private cluster often cannot reach it, so byoc carries a
small mixed corpus (prose, dialogue in the model's own chat template, code, numbers, several languages) and cuts it
into `samples` windows of `sequence_length` tokens. Windows start at different offsets of the token stream, so a
short corpus still gives varied inputs; max-calibration only needs representative ranges, not many distinct texts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

PROSE = (
    "The committee met on Tuesday to review the quarterly budget. Revenue rose eight percent against the same "
    "quarter last year, while operating costs held steady thanks to a new procurement process.",
    "Photosynthesis converts light energy into chemical energy. In the chloroplasts, water is split and oxygen is "
    "released, while carbon dioxide is fixed into sugars through the Calvin cycle.",
    "She opened the window and listened to the rain on the tin roof. Somewhere down the street a dog barked twice, "
    "then the night was quiet again except for the steady drumming overhead.",
    "To reset your password, open the account settings, choose Security, and select Reset password. A link valid "
    "for thirty minutes is sent to the address on file.",
    "The patient presented with a three-day history of fever, productive cough and mild shortness of breath. Chest "
    "auscultation revealed crackles in the right lower lobe.",
    "Interest rates influence the cost of borrowing for households and firms. When the central bank raises its "
    "policy rate, mortgage payments rise and investment tends to slow.",
    "A private network keeps inference traffic inside the account. Keys managed by the customer encrypt the model "
    "store, the cluster secrets and the audit logs at rest.",
    "The treaty was signed in 1648 and ended thirty years of war across central Europe, redrawing borders and "
    "establishing principles of sovereignty that diplomats still cite.",
    "Mix the flour, salt and yeast, then add warm water slowly until a soft dough forms. Knead for ten minutes, "
    "cover, and let it rise for an hour before shaping the loaves.",
    "Under the agreement, either party may terminate with ninety days' written notice. Confidential information "
    "remains protected for five years after termination.",
)
MULTILINGUAL = (
    "Le train pour Lyon part à dix-huit heures depuis le quai numéro quatre.",
    "Die Besprechung wurde auf Donnerstag verschoben, weil zwei Kollegen krank sind.",
    "El informe anual muestra un aumento de las exportaciones agrícolas del doce por ciento.",
    "Il museo resta aperto fino alle ventidue durante i mesi estivi.",
    "東京の天気は明日、晴れのち曇りの予報です。",
    "今天的会议讨论了新产品的发布计划和市场策略。",
)
CODE = (
    "def fibonacci(n: int) -> int:\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "SELECT customer_id, SUM(amount) AS total FROM orders WHERE created_at >= '2024-01-01' GROUP BY customer_id "
    "ORDER BY total DESC LIMIT 10;",
    'const server = http.createServer((req, res) => {\n  res.writeHead(200, {"Content-Type": "application/json"});\n'
    "  res.end(JSON.stringify({ ok: true }));\n});\nserver.listen(8080);\n",
    "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: gateway\nspec:\n  replicas: 2\n",
)
NUMBERS = (
    "Invoice 4471: 12 units at $38.50 each, subtotal $462.00, tax 8.25% = $38.12, total $500.12.",
    "Sensor log 2025-03-14T09:26:53Z temperature=21.7C humidity=43% pressure=1013.2hPa battery=87%.",
    "The sequence 2, 3, 5, 7, 11, 13, 17, 19, 23, 29 lists the first ten prime numbers.",
)
DIALOGUE = (
    ("What is the capital of Australia?", "The capital of Australia is Canberra, not Sydney as many people assume."),
    (
        "Summarise the plot of Hamlet in two sentences.",
        "Prince Hamlet seeks revenge on his uncle for his father's "
        "murder. His hesitation leads to the deaths of nearly everyone, himself included.",
    ),
    ("Write a haiku about autumn.", "Maple leaves descend / a slow red conversation / with the cooling ground."),
    ("How do I reverse a list in Python?", "Use my_list.reverse() to reverse in place, or my_list[::-1] for a copy."),
    (
        "Explain what a KV cache is.",
        "During generation the model stores the keys and values of earlier tokens so "
        "that each new token attends to them without recomputing the whole prefix.",
    ),
)


def texts(tokenizer: Any) -> list[str]:
    """The corpus, with the dialogues rendered in the model's chat template when it has one."""
    dialogues = []
    for question, answer in DIALOGUE:
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        rendered = None
        if getattr(tokenizer, "chat_template", None):
            try:
                rendered = tokenizer.apply_chat_template(messages, tokenize=False)
            except Exception:  # a template that wants other roles: fall back to plain text
                rendered = None
        dialogues.append(rendered if isinstance(rendered, str) else f"User: {question}\nAssistant: {answer}")
    return [*PROSE, *dialogues, *CODE, *MULTILINGUAL, *NUMBERS]


def token_windows(tokenizer: Any, samples: int, sequence_length: int) -> list[list[int]]:
    """`samples` windows of `sequence_length` token ids from the corpus' token stream (wrapping around)."""
    stream: list[int] = []
    for text in texts(tokenizer):
        stream.extend(int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"])
        if tokenizer.eos_token_id is not None:
            stream.append(int(tokenizer.eos_token_id))
    if not stream:
        raise ValueError("the tokenizer produced no tokens for the calibration corpus")
    # a prime stride spreads the window starts over the stream even when samples x length exceeds it
    stride = 97
    windows = []
    for index in range(samples):
        start = (index * stride) % len(stream)
        window = [stream[(start + offset) % len(stream)] for offset in range(sequence_length)]
        windows.append(window)
    return windows


def batches(windows: list[list[int]], batch_size: int) -> Iterator[list[list[int]]]:
    for start in range(0, len(windows), batch_size):
        yield windows[start : start + batch_size]
