"""Training batches for multiple-choice VQA: answer-only labels, images never truncated.

``Collator(adapter, processor, max_length)`` turns manifest records (``image``,
``question``, ``answer`` and ideally ``id``) into the model's inputs plus ``labels``:

* the text is the family's chat template (``BackboneAdapter.render``), the image goes
  through the family's processor, which expands the image placeholder into the visual
  tokens (Qwen, LLaVA) or builds the cross-attention mask (Llama-3.2-Vision);
* the processor runs once per batch (images of different sizes included), right-padded,
  and its tokenization is the only one: the answer span is located from its token
  offsets, knowing where the rendered prompt (with the generation prompt) ends in the
  rendered conversation. A template whose prompt is not a prefix of the conversation, or
  a tokenizer that merges the answer into the prompt's last token, raises instead of
  training on a shifted mask;
* only the answer tokens and the token that closes the assistant turn (``<|im_end|>``,
  ``<|eot_id|>``, ``</s>``) carry labels; prompt, image and padding positions are -100;
* nothing is ever truncated: cutting a sequence could cut visual tokens ("image features
  and image tokens do not match"), or the answer. A sample longer than ``max_length`` is
  dropped and counted in ``collator.dropped`` (``on_overflow="drop"``) or raises a
  DataError naming the record (``"error"``).

With ``image.processor_cache`` set, images come from the processed-pixel cache
(:mod:`cgmed.models.processor_cache`): a hit is neither decoded nor processed again, and the
batch is identical bit for bit to the uncached one.

``group_by_length`` / ``LengthGroupedBatchSampler`` batch samples of similar length to
cut padding; ``padding_fraction`` measures it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

from cgmed.data.imaging import ImageConfig
from cgmed.errors import BadImageError, ConfigError, DataError
from cgmed.models.images import load_image
from cgmed.models.processor_cache import ProcessorCache
from cgmed.models.registry import BackboneAdapter

IGNORE_INDEX = -100
OnOverflow = Literal["drop", "error"]
_TEMPLATE_FIX = (
    "check the chat template: the prompt with add_generation_prompt must be a prefix of the conversation"
)

# Per-token tensors (batch, seq, ...) and the value their padded positions hold. Every other
# tensor the processor returns (pixel_values, image_grid_thw, aspect_ratio_ids, ...) is per image.
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


@dataclass(frozen=True)
class Collated:
    """A batch made by :meth:`Collator.collate` and the records it left out.

    ``batch``: the padded tensors with ``labels`` (``{}`` when no record was usable);
    ``bad_images``: records left out for an unreadable image; ``too_long``: records left
    out for exceeding ``max_length`` (``on_overflow="drop"``).
    """

    batch: dict[str, Any]
    bad_images: int = 0
    too_long: int = 0


@dataclass(frozen=True, eq=False)
class _Rendered:
    """One record ready for the processor: its chat text, where the prompt ends in it, its image."""

    where: str
    text: str
    prompt_chars: int
    image: Any = None


class Collator:
    """Records -> padded batch with answer-only labels (see the module docstring).

    ``adapter``: the family's :class:`BackboneAdapter`; ``processor``: the loaded processor
    (with a fast tokenizer: its character offsets locate the answer); ``max_length``: the
    longest sequence (visual tokens included) kept in a batch; ``on_overflow``: ``"drop"``
    (skip and count in ``self.dropped``) or ``"error"``; ``image``: the image group (its
    ``processor_cache`` turns the cache on, ``self.cache``). Calling the collator returns ``{}``
    when every record of the batch was dropped; use :meth:`length` beforehand to filter the
    manifest so that this never happens.
    """

    def __init__(
        self,
        adapter: BackboneAdapter,
        processor: Any,
        max_length: int,
        on_overflow: OnOverflow = "drop",
        image: ImageConfig | None = None,
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
        self.image = image or ImageConfig()
        self.cache = ProcessorCache.for_config(self.image, adapter.family, processor)
        self.dropped = 0
        tok = processor.tokenizer
        if not getattr(tok, "is_fast", False):
            raise ConfigError(
                "model.path",
                f"the tokenizer ({type(tok).__name__}) gives no character offsets, which locate the answer",
                "use the checkpoint's fast tokenizer (a tokenizer.json, read with the tokenizers package)",
            )
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

    # ------------------------------------------------------------------ batches

    def __call__(self, records: Sequence[Any]) -> dict[str, Any]:
        """Encode, drop (or refuse) too-long samples, right-pad and stack."""
        return self.collate(records).batch

    def collate(
        self, records: Sequence[Any], *, skip_bad_images: bool = False, fill: bool = False
    ) -> Collated:
        """Records -> one padded batch, with over-long records (and unreadable images) left out.

        Over-long records follow ``on_overflow``. With ``skip_bad_images`` a record whose image
        cannot be read is left out and counted, otherwise its BadImageError propagates. With
        ``fill`` the kept records are repeated, in order, until the batch has ``len(records)``
        rows again (ranks of a distributed run must keep their batch shape). The processor
        runs once for the batch, and once more for the kept rows when some were left out
        after it ran (over-long) or repeated.
        """
        rendered, bad_images = [], 0
        for i, record in enumerate(records):
            try:
                rendered.append(self._render(record, i))
            except BadImageError:
                if not skip_bad_images:
                    raise
                bad_images += 1
        if not rendered:
            return Collated({}, bad_images)
        batch = self._process(rendered)
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        kept = [
            item for item, n_tokens in zip(rendered, lengths, strict=True) if self._fits(n_tokens, item.where)
        ]
        too_long = len(rendered) - len(kept)
        self.dropped += too_long
        if kept and fill:
            kept += [kept[k % len(kept)] for k in range(len(records) - len(kept))]
        if too_long or len(kept) != len(rendered):
            batch = self._process(kept) if kept else {}
        return Collated(batch, bad_images, too_long)

    # ------------------------------------------------------------------ one record

    def encode(self, record: Any, index: int | None = None) -> dict[str, Any]:
        """One record -> unpadded tensors (batch dimension 1) including ``labels``."""
        return self._process([self._render(record, index)])

    def length(self, record: Any, index: int | None = None) -> int:
        """Token count of a record, visual tokens included (what ``max_length`` bounds)."""
        return int(self.encode(record, index)["input_ids"].shape[1])

    def fits(self, encoded: dict[str, Any], record: Any, index: int | None = None) -> bool:
        """The over-long-sample policy for one :meth:`encode` result: True when it fits ``max_length``.

        An over-long sample is never truncated (that could cut visual tokens or the answer):
        False tells the caller to leave it out (``on_overflow="drop"``); under ``"error"`` a
        DataError names the record instead.
        """
        return self._fits(int(encoded["input_ids"].shape[1]), f"record {_record_id(record, index)}")

    def answer_span(self, question: str, answer: str, where: str = "record") -> tuple[str, list[int], int]:
        """(full text, token ids from the first answer token on, number of them that carry labels).

        The text alone is tokenized (no image). The labelled tokens are the answer's, up to
        and including the end-of-turn token; what the template writes after it (Qwen's
        newline) is not trained.
        """
        text, prompt_chars = self._conversation(question, answer, where)
        enc = self._tok(
            text,
            add_special_tokens=should_add_special_tokens(self._tok, text),
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        ids = enc["input_ids"][0]
        first, n_labels = self._label_span(
            ids, enc["offset_mapping"][0], _Rendered(where, text, prompt_chars)
        )
        return text, ids[first:].tolist(), n_labels

    # ------------------------------------------------------------------ internals

    def _conversation(self, question: str, answer: str, where: str) -> tuple[str, int]:
        """(the whole conversation's text, the length of the prompt it starts with)."""
        prompt = self.adapter.render(self.processor, question)
        full = self.adapter.render(self.processor, question, answer)
        if not full.startswith(prompt):
            raise DataError(
                where, "the rendered prompt is not a prefix of the rendered conversation", _TEMPLATE_FIX
            )
        return full, len(prompt)

    def _render(self, record: Any, index: int | None) -> _Rendered:
        where = f"record {_record_id(record, index)}"
        image_path, question, answer = (_field(record, k) for k in ("image", "question", "answer"))
        for key, value in (("image", image_path), ("question", question), ("answer", answer)):
            if not isinstance(value, str) or not value:
                raise DataError(where, f"field {key!r} is missing or empty", "rebuild the manifest")
        text, prompt_chars = self._conversation(question, answer, where)
        return _Rendered(
            where, text, prompt_chars, self.load_image(image_path, where, _field(record, "modality"))
        )

    def load_image(self, path: str, where: str = "record", modality: str | None = None) -> Any:
        """The image to hand :meth:`run_processor`: from the cache when it is on (a placeholder for
        a hit), else :func:`cgmed.models.images.load_image`; unreadable images raise BadImageError either way."""
        if self.cache is not None:
            return self.cache.image(path, modality, where)
        return load_image(path, where, self.image, modality)

    def run_processor(self, **kwargs: Any) -> Any:
        """``self.processor(**kwargs)``, answering images made by :meth:`load_image` from the cache."""
        with self.cache.attached(self.processor) if self.cache is not None else nullcontext():
            return self.processor(**kwargs)

    def _process(self, rendered: Sequence[_Rendered]) -> dict[str, Any]:
        """One processor call for ``rendered``: right-padded tensors with answer-only labels."""
        import torch

        enc = self._call_processor([item.text for item in rendered], [[item.image] for item in rendered])
        offsets = enc.pop("offset_mapping")
        batch = {key: value for key, value in enc.items() if isinstance(value, torch.Tensor)}
        self._clear_padding(batch)
        ids = batch["input_ids"]
        labels = torch.full_like(ids, IGNORE_INDEX)
        for row, item in enumerate(rendered):
            first, n_labels = self._label_span(ids[row], offsets[row], item)
            labels[row, first : first + n_labels] = ids[row, first : first + n_labels]
        batch["labels"] = labels
        return batch

    def _call_processor(self, texts: list[str], images: list[list[Any]]) -> Any:
        """The processor on a batch: right padding, token offsets, one list of images per text."""
        tok = self._tok
        kwargs = dict(
            images=images,
            text=texts,
            add_special_tokens=should_add_special_tokens(tok, texts[0]),
            padding=True,
            padding_side="right",
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        if tok.pad_token is not None:
            return self.run_processor(**kwargs)
        # The tokenizer pads only with a pad token; _clear_padding writes pad_id (eos) there.
        tok.pad_token = tok.eos_token
        try:
            return self.run_processor(**kwargs)
        finally:
            tok.pad_token = None

    def _clear_padding(self, batch: dict[str, Any]) -> None:
        """Padded positions hold ``pad_id`` and the ``_SEQ_PAD`` values, whatever the processor
        wrote there (Llama-3.2-Vision's processor lets the last image's cross-attention run on
        to the padded end)."""
        padded = ~batch["attention_mask"].bool()
        batch["input_ids"].masked_fill_(padded, self.pad_id)
        for key, value in _SEQ_PAD.items():
            tensor = batch.get(key)
            if tensor is not None:
                tensor.masked_fill_(padded.view(*padded.shape, *[1] * (tensor.dim() - 2)), value)

    def _label_span(self, ids: Any, offsets: Any, item: _Rendered) -> tuple[int, int]:
        """(position of the first answer token, number of labelled tokens) in one processed row.

        ``offsets`` are character spans in the text the processor tokenized: ``item.text`` with
        the prompt's image placeholders expanded. The expansion shifts the prompt's end as much
        as it shifts the last end-of-turn token, which closes the answer. The prompt's tokens
        must end exactly where the prompt does: a token running across (the answer merging with
        the prompt's last characters) would make training tokens differ from the prompt's.
        """
        starts, ends = offsets[:, 0], offsets[:, 1]
        spans_text = ends > starts  # not padding (which may hold eos = eot), nor an added BOS
        eot = self.adapter.eot_token
        close = item.text.rfind(eot)
        eot_positions = ((ids == self.eot_id) & spans_text).nonzero().flatten()
        if close < item.prompt_chars or eot_positions.numel() == 0:
            raise DataError(
                item.where,
                f"no {eot} closes the assistant answer",
                "check the chat template and BackboneAdapter.append_eot",
            )
        last = int(eot_positions[-1])
        boundary = item.prompt_chars + int(offsets[last, 0]) - close
        in_prompt = spans_text & (starts < boundary)
        if in_prompt.any() and int(ends[in_prompt].max()) != boundary:
            raise DataError(
                item.where,
                "the prompt tokenizes differently once the answer follows it "
                "(the answer merges with the prompt's last characters)",
                _TEMPLATE_FIX,
            )
        first = int((spans_text & (starts >= boundary)).nonzero()[0])
        n_labels = last - first + 1
        if n_labels < 2:
            raise DataError(item.where, "the answer is empty", "give every record a non-empty answer")
        return first, n_labels

    def _fits(self, n_tokens: int, where: str) -> bool:
        if n_tokens <= self.max_length:
            return True
        if self.on_overflow == "error":
            raise DataError(
                where,
                f"{n_tokens} tokens (visual tokens included) exceed train.max_length={self.max_length}; "
                "truncating would cut image tokens or the answer",
                "raise train.max_length, lower model.max_pixels, or set train.on_overflow=drop",
            )
        return False


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
