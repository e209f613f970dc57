"""Training batches for multiple-choice VQA: answer-only labels, images never truncated.

``Collator(adapter, processor, max_length)`` turns manifest records (``image``,
``question``, ``answer`` and ideally ``id``) into the model's inputs plus ``labels``:

* the text is the family's chat template (``BackboneAdapter.render``), the image goes
  through the family's processor, which expands the image placeholder into the visual
  tokens (Qwen, LLaVA) or builds the cross-attention mask (Llama-3.2-Vision);
* only the answer tokens and the token that closes the assistant turn (``<|im_end|>``,
  ``<|eot_id|>``, ``</s>``) carry labels; prompt, image and padding positions are -100.
  The answer span is found by tokenizing the prompt (with the generation prompt) and the
  whole conversation and checking that the first is a prefix of the second; a template
  or tokenizer that breaks this raises instead of training on a shifted mask;
* nothing is ever truncated: cutting a sequence could cut visual tokens ("image features
  and image tokens do not match"), or the answer. A sample longer than ``max_length`` is
  dropped and counted in ``collator.dropped`` (``on_overflow="drop"``) or raises a
  DataError naming the record (``"error"``).

``group_by_length`` / ``LengthGroupedBatchSampler`` batch samples of similar length to
cut padding; ``padding_fraction`` measures it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

from cgmed.errors import BadImageError, ConfigError, DataError
from cgmed.models.registry import BackboneAdapter

IGNORE_INDEX = -100
OnOverflow = Literal["drop", "error"]

# Per-token tensors (batch, seq, ...): padded on the right along the sequence, with these
# values. Every other tensor the processor returns (pixel_values, image_grid_thw,
# aspect_ratio_ids, ...) is per image and is concatenated along the first dimension.
_SEQ_PAD = {
    "attention_mask": 0,
    "labels": IGNORE_INDEX,
    "mm_token_type_ids": 0,
    "token_type_ids": 0,
    "cross_attention_mask": 0,
}


def _field(record: Any, key: str) -> Any:
    """A record's field: manifest dicts and ``cgmed.data.record.Sample`` objects alike."""
    return record.get(key) if isinstance(record, Mapping) else getattr(record, key, None)


def _record_id(record: Any, index: int | None = None) -> str:
    rid = _field(record, "id")
    if rid is not None:
        return str(rid)
    return f"#{index}" if index is not None else "<record without id>"


def load_image(path: str, where: str = "record"):
    """Open an image with PIL as RGB (grayscale, palette and RGBA medical images included).

    Raises BadImageError naming ``where`` and the path when the file is missing, unreadable, not
    an image, truncated, or larger than PIL's decompression-bomb limit.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (FileNotFoundError, IsADirectoryError):
        raise BadImageError(
            where, f"image {path!r} does not exist", "check the manifest's image paths"
        ) from None
    except (OSError, Image.DecompressionBombError) as err:
        raise BadImageError(
            where, f"image {path!r} cannot be read ({err})", "re-export or drop this image"
        ) from None


class Collator:
    """Records -> padded batch with answer-only labels (see the module docstring).

    ``adapter``: the family's :class:`BackboneAdapter`; ``processor``: the loaded processor;
    ``max_length``: the longest sequence (visual tokens included) kept in a batch;
    ``on_overflow``: ``"drop"`` (skip and count in ``self.dropped``) or ``"error"``.
    Calling the collator returns ``{}`` when every record of the batch was dropped; use
    :meth:`length` beforehand to filter the manifest so that this never happens.
    """

    def __init__(
        self,
        adapter: BackboneAdapter,
        processor: Any,
        max_length: int,
        on_overflow: OnOverflow = "drop",
    ):
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0:
            raise ConfigError(
                "train.max_length",
                f"must be a positive integer, got {max_length!r}",
                "e.g. train.max_length=2048",
            )
        if on_overflow not in ("drop", "error"):
            raise ConfigError(
                "train.on_overflow",
                f"{on_overflow!r} is not one of ['drop', 'error']",
                "set train.on_overflow=drop or train.on_overflow=error",
            )
        self.adapter = adapter
        self.processor = processor
        self.max_length = max_length
        self.on_overflow = on_overflow
        self.dropped = 0
        tok = processor.tokenizer
        self._tok = tok
        self.eot_id = _token_id(tok, adapter.eot_token, adapter.family)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if pad_id is None:
            raise ConfigError(
                "model.path",
                "the tokenizer has neither a pad nor an eos token",
                "use a checkpoint whose tokenizer defines pad_token",
            )
        self.pad_id = int(pad_id)

    # ------------------------------------------------------------------ one sample

    def answer_span(self, question: str, answer: str, where: str = "record") -> tuple[str, list[int], int]:
        """(full text, token ids after the prompt, number of them that carry labels).

        The labelled tokens are the first ones after the prompt, up to and including the
        end-of-turn token; what the template writes after it (Qwen's newline) is not trained.
        """
        prompt = self.adapter.render(self.processor, question)
        full = self.adapter.render(self.processor, question, answer)
        fix = "check the chat template: the prompt with add_generation_prompt must be a prefix of the conversation"
        if not full.startswith(prompt):
            raise DataError(where, "the rendered prompt is not a prefix of the rendered conversation", fix)
        add = should_add_special_tokens(self._tok, full)
        p_ids = self._tok(prompt, add_special_tokens=add)["input_ids"]
        f_ids = self._tok(full, add_special_tokens=add)["input_ids"]
        if f_ids[: len(p_ids)] != p_ids:
            raise DataError(
                where,
                "the prompt tokenizes differently once the answer follows it "
                f"(answer {answer!r} merges with the prompt's last tokens)",
                fix,
            )
        tail = f_ids[len(p_ids) :]
        if self.eot_id not in tail:
            raise DataError(
                where,
                f"no {self.adapter.eot_token} closes the assistant answer {answer!r}",
                "check the chat template and BackboneAdapter.append_eot",
            )
        n_labels = tail.index(self.eot_id) + 1
        if n_labels < 2:
            raise DataError(where, "the answer is empty", "give every record a non-empty answer")
        return full, tail, n_labels

    def encode(self, record: Any, index: int | None = None) -> dict[str, Any]:
        """One record -> unpadded tensors (batch dimension 1) including ``labels``."""
        import torch

        where = f"record {_record_id(record, index)}"
        image_path, question, answer = (_field(record, k) for k in ("image", "question", "answer"))
        for key, value in (("image", image_path), ("question", question), ("answer", answer)):
            if not isinstance(value, str) or not value:
                raise DataError(where, f"field {key!r} is missing or empty", "rebuild the manifest")
        full, tail, n_labels = self.answer_span(question, answer, where)
        image = load_image(image_path, where)
        enc = self.processor(
            images=[image],
            text=[full],
            add_special_tokens=should_add_special_tokens(self._tok, full),
            return_tensors="pt",
        )
        out = {k: v for k, v in enc.items() if isinstance(v, torch.Tensor)}
        ids = out["input_ids"][0]
        start = ids.numel() - len(tail)
        # The processor only expands the image placeholder, which lies in the prompt: the
        # tail must come out exactly as the text-only tokenization predicted.
        if start < 0 or ids[start:].tolist() != tail:
            raise DataError(
                where,
                "the processor's tokens after the prompt differ from the tokenizer's",
                "check that the image placeholder appears only in the user turn",
            )
        labels = torch.full_like(out["input_ids"], IGNORE_INDEX)
        labels[0, start : start + n_labels] = ids[start : start + n_labels]
        out["labels"] = labels
        return out

    def length(self, record: Any, index: int | None = None) -> int:
        """Token count of a record, visual tokens included (what ``max_length`` bounds)."""
        return int(self.encode(record, index)["input_ids"].shape[1])

    def fits(self, encoded: dict[str, Any], record: Any, index: int | None = None) -> bool:
        """The over-long-sample policy: True when ``encoded`` fits ``max_length``.

        An over-long sample is never truncated (that could cut visual tokens or the answer):
        False tells the caller to leave it out (``on_overflow="drop"``); under ``"error"`` a
        DataError names the record instead.
        """
        n_tokens = encoded["input_ids"].shape[1]
        if n_tokens <= self.max_length:
            return True
        if self.on_overflow == "error":
            raise DataError(
                f"record {_record_id(record, index)}",
                f"{n_tokens} tokens (visual tokens included) exceed train.max_length={self.max_length}; "
                "truncating would cut image tokens or the answer",
                "raise train.max_length, lower model.max_pixels, or set train.on_overflow=drop",
            )
        return False

    # ------------------------------------------------------------------ a batch

    def __call__(self, records: Sequence[Any]) -> dict[str, Any]:
        """Encode, drop (or refuse) too-long samples, right-pad and stack."""
        samples = []
        for i, record in enumerate(records):
            encoded = self.encode(record, i)
            if self.fits(encoded, record, i):
                samples.append(encoded)
            else:
                self.dropped += 1
        if not samples:
            return {}
        return self.pad(samples)

    def pad(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Right-pad per-token tensors and concatenate per-image tensors of encoded samples."""
        import torch

        keys = list(samples[0])
        if any(list(s) != keys for s in samples):
            raise ValueError(f"samples carry different tensors: {[sorted(s) for s in samples]}")
        width = max(s["input_ids"].shape[1] for s in samples)
        batch = {}
        for key in keys:
            if key == "input_ids" or key in _SEQ_PAD:
                value = self.pad_id if key == "input_ids" else _SEQ_PAD[key]
                parts = []
                for s in samples:
                    t = s[key]
                    fill = t.new_full((t.shape[0], width - t.shape[1], *t.shape[2:]), value)
                    parts.append(torch.cat([t, fill], dim=1))
                batch[key] = torch.cat(parts, dim=0)
            else:
                batch[key] = torch.cat([s[key] for s in samples], dim=0)
        return batch


def should_add_special_tokens(tokenizer: Any, text: str) -> bool:
    """Whether tokenizing chat-template ``text`` should add the tokenizer's special tokens.

    Templates that write the BOS token themselves (Llama-3) must not get a second one from
    the tokenizer; templates without it (llava-hf) rely on the tokenizer adding it. The same
    rule as transformers' ``ProcessorMixin.apply_chat_template(tokenize=True)``.
    """
    bos = tokenizer.bos_token
    return not (bos is not None and text.startswith(bos))


def _token_id(tokenizer: Any, token: str, family: str) -> int:
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or (tokenizer.unk_token_id is not None and tid == tokenizer.unk_token_id):
        raise ConfigError(
            "model.family",
            f"the tokenizer has no {token!r} token, which closes a {family} answer",
            "check model.family against the checkpoint",
        )
    return int(tid)


# --------------------------------------------------------------------------- length grouping


def group_by_length(
    lengths: Sequence[int],
    batch_size: int,
    seed: int,
    mega_batch_mult: int = 50,
    drop_last: bool = False,
) -> list[list[int]]:
    """Batches of indices whose lengths are close, in an order shuffled by ``seed``.

    Indices are shuffled, cut into mega-batches of ``batch_size * mega_batch_mult``, each
    sorted by length and cut into batches; the batch order is then shuffled. Larger
    ``mega_batch_mult`` -> less padding, less randomness in which samples share a batch.
    Deterministic for a given seed (pass ``seed + epoch`` for a new order per epoch).
    """
    if batch_size <= 0:
        raise ConfigError("train.batch_size", f"must be positive, got {batch_size}")
    if mega_batch_mult <= 0:
        raise ConfigError("train.mega_batch_mult", f"must be positive, got {mega_batch_mult}")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = batch_size * mega_batch_mult
    batches: list[list[int]] = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: (-lengths[i], i))
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    if drop_last:
        batches = [b for b in batches if len(b) == batch_size]
    rng.shuffle(batches)
    return batches


def random_batches(n: int, batch_size: int, seed: int, drop_last: bool = False) -> list[list[int]]:
    """Plain shuffled batches (the baseline ``group_by_length`` is measured against)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    batches = [order[j : j + batch_size] for j in range(0, n, batch_size)]
    return [b for b in batches if len(b) == batch_size] if drop_last else batches


def padding_fraction(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Share of padded positions over all positions when each batch pads to its longest."""
    total = pad = 0
    for b in batches:
        if not b:
            continue
        width = max(lengths[i] for i in b)
        total += width * len(b)
        pad += sum(width - lengths[i] for i in b)
    return pad / total if total else 0.0


class LengthGroupedBatchSampler:
    """A torch batch sampler (``DataLoader(ds, batch_sampler=...)``) over ``group_by_length``.

    ``set_epoch(e)`` reshuffles with ``seed + e``. With ``num_replicas > 1`` each rank gets
    every ``num_replicas``-th batch and all ranks the same number of batches (the remainder
    is dropped), so no rank waits for a step the others never take.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int = 0,
        mega_batch_mult: int = 50,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if not 0 <= rank < num_replicas:
            raise ConfigError("train.rank", f"rank {rank} is outside [0, {num_replicas})")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega_batch_mult = mega_batch_mult
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use a different (still deterministic) order for this epoch."""
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        batches = group_by_length(
            self.lengths, self.batch_size, self.seed + self.epoch, self.mega_batch_mult, self.drop_last
        )
        per_rank = len(batches) // self.num_replicas
        return batches[self.rank : per_rank * self.num_replicas : self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())
