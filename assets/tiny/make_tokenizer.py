"""Train the tiny model's tokenizer and write assets/tiny/tokenizer.json.

Byte-level BPE in the GPT-2 style (the full 256-byte alphabet, so every string round-trips),
4096 tokens, <|endoftext|> = 0 (bos/eos) and <|pad|> = 1, trained on a fixed, sorted selection
of the running interpreter's standard library: every 5th file of the sorted list used by the
synthetic workload, up to 2 MB. Deterministic: the same Python gives the same file.

    python assets/tiny/make_tokenizer.py [--out PATH]

The shipped file was made with CPython 3.11.7 and tokenizers 0.23.3; it is data, so rerun this
only to change the tokenizer (and then bump TINY_VERSION in engines/models/tiny.py).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # run from a checkout without installing

from engines.models.workloads import stdlib_files  # noqa: E402

VOCAB_SIZE = 4096
SPECIAL = ["<|endoftext|>", "<|pad|>"]
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
    return tok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "tokenizer.json")
    args = parser.parse_args()
    texts = training_texts()
    tok = train(texts)
    assert tok.token_to_id(SPECIAL[0]) == 0 and tok.token_to_id(SPECIAL[1]) == 1
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    args.out.write_text(tok.to_str(pretty=True) + "\n")
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"trained on {len(texts)} files, {sum(len(t.encode()) for t in texts)} bytes -> {args.out} sha256 {digest}")


if __name__ == "__main__":
    main()
