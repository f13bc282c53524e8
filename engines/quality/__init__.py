"""Quality next to speed: a sandbox for generated code, HumanEval pass@k, and perplexity.

Nothing here imports torch or transformers at module level; perplexity.HFLogprobs does so
lazily and is meant for worker processes only.
"""
