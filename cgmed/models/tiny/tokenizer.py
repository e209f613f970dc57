"""Tokenizers of the tiny checkpoints: a BPE trained here on ``corpus()``, per family.

Each uses the real family's pre-tokenization pipeline (byte-level with Qwen2's or Llama-3's
split regex, or Llama-2's metaspace with byte fallback), its special tokens where the real
model places them (after the trained vocabulary), and its transformers tokenizer class, so
that prompts tokenize the way they do with the real checkpoint, only into fewer, shorter
pieces. Nothing is downloaded.
"""

from __future__ import annotations

import json
import string

from cgmed.models.tiny.corpus import corpus

BPE_VOCAB = 1024  # regular (trained) tokens; special tokens come on top

# Qwen2's split regex (transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX).
_QWEN_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Llama-3's split regex (tiktoken cl100k-style; numbers in groups of up to three digits).
_LLAMA3_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)

QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
]

Vocab = dict[str, int]
Merges = list[tuple[str, str]]


def pad_to(n: int, multiple: int = 64) -> int:
    """``n`` rounded up to a multiple of ``multiple`` (embedding tables are padded like this)."""
    return -(-n // multiple) * multiple


def _train_bytelevel_bpe(split_regex: str, vocab_size: int) -> tuple[Vocab, Merges]:
    """Byte-level BPE (GPT-2 byte alphabet) with a regex split, as Qwen2 and Llama-3 use."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split_regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    return _vocab_and_merges(tok)


def _train_metaspace_bpe(vocab_size: int) -> tuple[Vocab, Merges]:
    """Llama-2 style BPE: ``▁`` for spaces, <unk>/<s>/</s> at 0-2, byte-fallback tokens at 3-258."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # Splitting words, punctuation and digits while training keeps every merge inside a word,
    # as sentencepiece's are (it splits by unicode script and digit); the Llama tokenizer
    # then runs unsplit (Metaspace split=False) over the same merges and finds the same pieces.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
            pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size + 3 + len(byte_tokens),
        special_tokens=["<unk>", "<s>", "</s>", *byte_tokens],
        initial_alphabet=[c for c in string.printable if not c.isspace()] + ["▁"],
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    return _vocab_and_merges(tok)


def _vocab_and_merges(tok) -> tuple[Vocab, Merges]:
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges


def _with_specials(vocab: Vocab, specials: list[str]) -> Vocab:
    """Append special tokens at the end of the vocabulary, as the real families place them."""
    out = dict(vocab)
    for token in specials:
        out.setdefault(token, len(out))
    return out


def _register_specials(tokenizer, specials: list[str]) -> None:
    """Mark tokens already in the vocabulary as special added tokens (never split, same ids)."""
    from tokenizers import AddedToken

    tokenizer.add_tokens(
        [AddedToken(token, special=True, normalized=False) for token in specials], special_tokens=True
    )


def qwen_tokenizer():
    """A ``Qwen2Tokenizer`` (Qwen2-VL and Qwen2.5-VL share it): no BOS, ``<|im_end|>`` ends a turn."""
    from transformers import Qwen2Tokenizer

    vocab, merges = _train_bytelevel_bpe(_QWEN_SPLIT, BPE_VOCAB)
    vocab = _with_specials(vocab, QWEN_SPECIALS)
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        errors="replace",
        model_max_length=32768,
    )
    _register_specials(tok, QWEN_SPECIALS)
    return tok


def llava_tokenizer():
    """A ``LlamaTokenizer`` as llava-hf's: Llama-2's specials, then ``<image>`` and ``<pad>``."""
    from transformers import LlamaTokenizer

    vocab, merges = _train_metaspace_bpe(BPE_VOCAB)
    # llava-hf adds <image> (32000) and <pad> (32001) after Llama-2's 32000 tokens.
    vocab = _with_specials(vocab, ["<image>", "<pad>"])
    tok = LlamaTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        add_bos_token=True,
        add_eos_token=False,
        legacy=False,
        padding_side="left",
        model_max_length=4096,
    )
    _register_specials(tok, ["<unk>", "<s>", "</s>", "<image>", "<pad>"])
    return tok


def mllama_tokenizer():
    """``(tokenizer, text vocabulary size)`` of Llama-3.2-Vision: Llama-3's BPE and specials.

    Llama-3 reserves special ids up to a round vocabulary size; ``<|image|>`` comes right
    after it (128256 in the real model), an id the text model embeds (vocab_size + 8 rows)
    but the LM head never predicts.
    """
    from transformers import TokenizersBackend

    vocab, merges = _train_bytelevel_bpe(_LLAMA3_SPLIT, BPE_VOCAB)
    specials = list(LLAMA3_SPECIALS)
    n_text = pad_to(len(vocab) + len(specials))
    specials += [f"<|reserved_special_token_{i}|>" for i in range(3, 3 + n_text - len(vocab) - len(specials))]
    specials.append("<|image|>")
    vocab = _with_specials(vocab, specials)
    bos = "<|begin_of_text|>"
    tok = TokenizersBackend(
        tokenizer_object=_llama3_backend(vocab, merges, bos),
        bos_token=bos,
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        model_max_length=131072,
    )
    _register_specials(tok, specials)
    return tok, n_text


def _llama3_backend(vocab: Vocab, merges: Merges, bos: str):
    """Llama-3's ``tokenizers`` pipeline: regex split, byte level, ``bos`` put before every text."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, vocab[bos])]
            ),
        ]
    )
    return backend
