"""Token-weighted sliding-window perplexity over a corpus, against any log-probability source.

Entry points: `perplexity(docs, logprob_fn, window, stride)` over token-id documents;
`load_corpus(source)` for texts ("stdlib", "stdlib:N", a .jsonl file with a "text" field, or
any other text file); `HFLogprobs(model_dir)` a logprob_fn on transformers (imports torch
lazily: workers only); `evaluate_hf(model_dir, texts, ...)` the two together.

A logprob_fn(window, context_len) returns log p(window[i] | window[:i]) for every i in
range(context_len, len(window)), natural log. Windows of `window` tokens start every `stride`
tokens; each window scores only the tokens the previous one did not, so with stride < window
every token but a document's first is scored exactly once, with at least window - stride
tokens of context (the Hugging Face "perplexity of fixed-length models" recipe). With
stride == window the chunks do not overlap and each chunk's first token goes unscored.
"""

from __future__ import annotations

import json
import math
import os
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from engines.base import SpecError

LogprobFn = Callable[[Sequence[int], int], Sequence[float]]
STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "__phello__"}


@dataclass(frozen=True)
class Perplexity:
    nll: float  # summed negative log-likelihood (nats) over the scored tokens
    tokens: int  # tokens scored
    windows: int  # logprob_fn calls

    @property
    def mean_nll(self) -> float:
        return self.nll / self.tokens if self.tokens else math.nan

    @property
    def ppl(self) -> float:
        return math.exp(self.mean_nll) if self.tokens else math.nan


def spans(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, context_len) of each window over a document of n tokens."""
    if window < 2 or not 1 <= stride <= window:
        raise SpecError(f"perplexity needs window >= 2 and 1 <= stride <= window (got window={window}, stride={stride})")
    out, prev_end = [], 0
    for begin in range(0, max(n - 1, 0), stride):
        end = min(begin + window, n)
        out.append((begin, end, max(1, prev_end - begin)))
        prev_end = end
        if end == n:
            break
    return out


def perplexity(docs: Sequence[Sequence[int]], logprob_fn: LogprobFn, window: int = 1024,
               stride: int = 512) -> Perplexity:
    """Perplexity over documents of token ids, weighted by token (not by window or document)."""
    nll, tokens, calls = 0.0, 0, 0
    for doc in docs:
        for begin, end, ctx in spans(len(doc), window, stride):
            lps = logprob_fn(doc[begin:end], ctx)
            if len(lps) != end - begin - ctx:
                raise ValueError(f"logprob_fn returned {len(lps)} values for {end - begin - ctx} target tokens")
            nll -= float(sum(lps))
            tokens += len(lps)
            calls += 1
    return Perplexity(nll, tokens, calls)


# ---- corpora -------------------------------------------------------------------------------

def stdlib_files(n_files: int) -> list[Path]:
    """The first n_files .py files of the running Python's stdlib, by sorted relative path."""
    root = sysconfig.get_paths()["stdlib"]
    found = []
    for path, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in STDLIB_SKIP]  # prune: the test suites are large
        rel = os.path.relpath(path, root)
        found += [(Path(rel, n).as_posix() if rel != "." else n, Path(path, n)) for n in names if n.endswith(".py")]
    return [p for _, p in sorted(found)[:n_files]]


def stdlib_corpus(n_files: int = 20) -> list[str]:
    return [p.read_text(encoding="utf-8", errors="replace") for p in stdlib_files(n_files)]


def text_corpus(path: str | Path, kind: str = "corpus file") -> list[str]:
    """A whole text file as one document."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{kind} {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{kind} {p} cannot be read as UTF-8 text ({exc}); convert it to UTF-8") from None
    if not text.strip():
        raise SpecError(f"{kind} {p} is empty")
    return [text]


def jsonl_corpus(path: str | Path, field: str = "text", kind: str = "corpus file") -> list[str]:
    """One document per JSON line's `field`; a bad line raises SpecError naming file and line."""
    p = Path(path).expanduser()
    (text,) = text_corpus(p, kind)
    docs = []
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SpecError(f"{p}:{no}: not valid JSON ({exc.msg}); each line must be an object with a "
                            f"string field {field!r}") from None
        if not isinstance(row, dict) or not isinstance(row.get(field), str):
            raise SpecError(f"{p}:{no}: needs a string field {field!r}, e.g. {{\"{field}\": \"def f(): ...\"}}")
        docs.append(row[field])
    if not docs:
        raise SpecError(f"{kind} {p} holds no JSON lines")
    return docs


def load_corpus(source: str = "stdlib", n_files: int = 20) -> list[str]:
    """'stdlib' (n_files files), 'stdlib:N', a .jsonl file (field "text"), or any text file."""
    if source == "stdlib" or source.startswith("stdlib:"):
        count = source.partition(":")[2] or str(n_files)
        if not count.isdigit() or int(count) < 1:
            raise SpecError(f"corpus {source!r}: use stdlib or stdlib:N with N >= 1 files")
        return stdlib_corpus(int(count))
    if source.endswith(".jsonl"):
        return jsonl_corpus(source)
    return text_corpus(source)


# ---- transformers ----------------------------------------------------------------------------

class HFLogprobs:
    """A logprob_fn on a transformers causal LM. Imports torch: call it in worker processes only."""

    def __init__(self, model, tokenizer=None, device: str = "cpu"):
        self.model, self.tokenizer, self.device = model, tokenizer, device

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "cpu", dtype: str = "float32") -> "HFLogprobs":
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, dtype)).to(device).eval()
        return cls(model, AutoTokenizer.from_pretrained(str(model_dir)), device)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def __call__(self, window: Sequence[int], context_len: int) -> list[float]:
        import torch

        ids = torch.tensor([list(window)], device=self.device)
        keep = len(window) - context_len + 1  # logits at context_len-1 .. end; the last is unused
        with torch.inference_mode():
            logits = self.model(ids, logits_to_keep=keep).logits[0, :-1].float()
            logp = torch.log_softmax(logits, dim=-1)
            target = ids[0, context_len:]
            return logp.gather(-1, target[:, None])[:, 0].tolist()


def evaluate_hf(model_dir: str | Path, texts: Sequence[str], window: int = 1024, stride: int = 512,
                device: str = "cpu") -> Perplexity:
    fn = HFLogprobs.load(model_dir, device)
    return perplexity([fn.encode(t) for t in texts], fn, window, stride)
