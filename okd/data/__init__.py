"""Layer 1: reading instruction data, prompt templates, tokenization with response-only labels, batching."""

from okd.data.batching import Collator, collate_prompts, length_grouped_order
from okd.data.readers import Example, load_examples, load_examples_with_stats, record_to_example
from okd.data.templates import TEMPLATES, format_prompt
from okd.data.tokenize import IGNORE_INDEX, encode_example, encode_examples, left_cut, prompt_ids

__all__ = [
    "Collator", "Example", "IGNORE_INDEX", "TEMPLATES", "collate_prompts", "encode_example",
    "encode_examples", "format_prompt", "left_cut", "length_grouped_order", "load_examples",
    "load_examples_with_stats", "prompt_ids", "record_to_example",
]
