"""Train the tiny model's tokenizer and write assets/tiny/tokenizer.json.

Byte-level BPE in the GPT-2 style (the full 256-byte alphabet, so every string round-trips),
4096 tokens, <|endoftext|> = 0 (bos/eos) and <|pad|> = 1, trained on a fixed, sorted selection
of the running interpreter's standard library: every 5th file of the sorted list used by the
synthetic workload, up to 2 MB. Deterministic: the same Python gives the same file.

The fill-in-the-middle tokens (StarCoder's <fim_prefix>, <fim_middle>, <fim_suffix>, ids 4093-4095) take
the places of the last three merges learnt (' SY', ' THE', ' AIX'): no merge builds on them, every other id
stays where it was, and the vocabulary (so the embedding, so the weights) keeps its size.

    python assets/tiny/make_tokenizer.py [--out PATH]

The shipped file was made with CPython 3.11.7 and tokenizers 0.23.3; it is data, so rerun this
only to change the tokenizer (and then bump TINY_VERSION in engines/models/tiny.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # run from a checkout without installing

from engines.models.workloads import stdlib_files  # noqa: E402

VOCAB_SIZE = 4096
SPECIAL = ["<|endoftext|>", "<|pad|>"]
FIM = ["<fim_prefix>", "<fim_middle>", "<fim_suffix>"]
STRIDE = 5
BUDGET_BYTES = 2_000_000


def training_texts() -> list[str]:
    texts: list[str] = []
    total = 0
    for path in stdlib_files()[::STRIDE]:
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        texts.append(text)
        total += len(text.encode())
        if total >= BUDGET_BYTES:
            break
    return texts


def train(texts: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)  # offsets only; adds no tokens
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL,  # first, so they get ids 0 and 1
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return with_fim_tokens(tok)


def with_fim_tokens(tok: Tokenizer) -> Tokenizer:
    """The last len(FIM) merges and their tokens give way to the FIM tokens, at the same ids."""
    data = json.loads(tok.to_str())
    model = data["model"]
    del model["merges"][-len(FIM) :]
    by_id = {i: t for t, i in model["vocab"].items()}
    for name, i in zip(FIM, range(VOCAB_SIZE - len(FIM), VOCAB_SIZE)):
        del model["vocab"][by_id[i]]
        data["added_tokens"].append({"id": i, "content": name, "single_word": False, "lstrip": False,
                                     "rstrip": False, "normalized": False, "special": True})  # fmt: skip
    return Tokenizer.from_str(json.dumps(data))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "tokenizer.json")
    args = parser.parse_args()
    texts = training_texts()
    tok = train(texts)
    assert tok.token_to_id(SPECIAL[0]) == 0 and tok.token_to_id(SPECIAL[1]) == 1
    assert [tok.token_to_id(t) for t in FIM] == list(range(VOCAB_SIZE - len(FIM), VOCAB_SIZE))
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    args.out.write_text(tok.to_str(pretty=True) + "\n")
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"trained on {len(texts)} files, {sum(len(t.encode()) for t in texts)} bytes -> {args.out} sha256 {digest}")


if __name__ == "__main__":
    main()
