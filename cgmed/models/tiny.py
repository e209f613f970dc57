"""Tiny, randomly initialised checkpoints of every supported family, built offline.

``init_tiny("qwen2_vl", "runs/tiny-qwen2vl")`` writes a directory that looks like a real
hub checkpoint (``config.json``, ``model.safetensors``, tokenizer files, image processor
config, chat template) so that ``get_adapter(family).load(out)`` goes through exactly the
code path of a real model. Nothing is downloaded: the tokenizer is a BPE trained here with
the ``tokenizers`` library on a small built-in corpus, using the same pre-tokenization
pipeline as the real family (byte-level with Qwen's / Llama-3's split regex, or Llama-2's
metaspace with byte fallback), and the family's special tokens and chat template.

Sizes are chosen for CPU tests and demos: well under 5M parameters, a vocabulary of about
1k tokens, 56 px images by default. Same ``seed`` -> byte-identical weights.

    python -c "from cgmed.models.tiny import init_tiny; init_tiny('llava', '/tmp/tiny-llava')"
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cgmed.data.choices import ANSWER_SUFFIX, LETTERS
from cgmed.errors import ConfigError

TINY_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "llava", "mllama")
DEFAULT_IMAGE_SIZE = 56
_BPE_VOCAB = 1024  # regular (trained) tokens, special tokens come on top


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",")]


# --------------------------------------------------------------------------- corpus

_MODALITIES = _csv(
    "CT, MRI, X-ray, ultrasound, OCT, dermoscopy, endoscopy, microscopy, fundus photograph, "
    "colposcopy, photograph, radiograph, scan"
)
_AREAS = _csv(
    "lung, chest, brain, kidney, liver, breast, skin, retina, fundus, cervix, bladder, "
    "intestine, bones, thyroid, mouth, cell, heart, abdomen"
)
_FINDINGS = _csv(
    "Normal, Tumor, Cyst, Benign, Malignant, Pneumonia, COVID-19, Fracture, Glaucoma, "
    "Cataract, Diabetic retinopathy, Melanoma, Nevus, Polyp, Stone, Edema, Effusion, Nodule, "
    "Mass, Hemorrhage, Infection, Inflammation, Good quality, Poor quality, Mild, Moderate, "
    "Severe, Proliferative, No finding, Lesion, Carcinoma, Lymphocyte, Neutrophil, Abnormal, "
    "Healthy, Disease"
)
_QUESTIONS = [
    "What does this {a} {m} image show?",
    "Which finding is present in this {m} image of the {a}?",
    "Is there evidence of disease in this {a} {m} image?",
    "Look at this {m} scan of the {a}. What is the diagnosis?",
    "Examine the {m} image of the {a} and choose the right answer.",
    "Which diagnosis does this {m} image of the {a} support?",
    "How would you rate the image quality of this {m} image of the {a}?",
    "Classify this {a} {m} image. Which option is correct?",
]
_WORDS = (
    "patient image scan slice view region organ tissue lesion finding diagnosis disease condition "
    "status grade level severity quality normal abnormal present absent visible evidence sign signs "
    "left right upper lower anterior posterior lateral medial central peripheral bilateral "
    "small large round oval irregular bright dark dense hypodense hyperdense opacity shadow blob "
    "outline contour border margin shape size texture pattern density intensity contrast "
    "tumor tumour cancer cyst benign malignant metastasis adenoma carcinoma glioma meningioma "
    "pneumonia tuberculosis covid fibrosis emphysema atelectasis pneumothorax cardiomegaly "
    "fracture arthritis osteoporosis scoliosis retinopathy glaucoma cataract macular degeneration "
    "melanoma nevus keratosis eczema psoriasis polyp ulcer bleeding stone hydronephrosis "
    "cirrhosis steatosis hepatitis nodule goiter thyroiditis caries periodontitis gingivitis "
    "leukocyte erythrocyte lymphocyte monocyte eosinophil basophil neutrophil platelet blast "
    "mild moderate severe proliferative early advanced stage healthy unhealthy infected "
    "which what where how is are does this that the a an of in on with from and or not "
    "image shows showing shown indicates suggests consistent likely most best option options "
    "choose select answer letter choices given directly correct following question "
    "user assistant system user assistant system picture video"
)
_EXTRA = [
    _WORDS,
    "You are a helpful assistant.",
    "Cutting Knowledge Date: December 2023",
    "Today Date: 26 Jul 2024",
    "The image shows a bright blob inside the organ outline; the patient's status is abnormal.",
    "A dark round region is visible, which suggests a cyst rather than a tumor.",
    "Options: A, B, C, D. The answer is B. Answer: C. (A) (B) [C] {D} 1, 2, 3; 4: 5 - 6 + 7 = 8/9 % 0!",
    "0 1 2 3 4 5 6 7 8 9 10 25 50 100 0.5 1.0 12.5% x y w h [10, 20, 30, 40]",
    "Where is the lesion? Give the bounding box of the nodule in this image.",
    "user assistant system USER: ASSISTANT: Picture Video",
]


def _corpus() -> list[str]:
    """A few hundred lines of medical VQA-style text (deterministic)."""
    lines = list(_EXTRA)
    for qi, q in enumerate(_QUESTIONS):
        for mi, m in enumerate(_MODALITIES):
            a = _AREAS[(qi * 7 + mi) % len(_AREAS)]
            opts = [_FINDINGS[(qi * 5 + mi * 3 + k) % len(_FINDINGS)] for k in range(4)]
            letter = LETTERS[(qi + mi) % 4]
            body = "\n".join(f"{LETTERS[k]}: {o}" for k, o in enumerate(opts))
            lines.append(f"{q.format(a=a, m=m)}\n{body}\n{ANSWER_SUFFIX}")
            lines.append(f"USER: {q.format(a=a, m=m)} ASSISTANT: {letter}")
            lines.append(f"{letter}. {opts[0]} {letter}")
    lines += [" ".join(LETTERS[:4]), " ".join(_FINDINGS), " ".join(_AREAS), " ".join(_MODALITIES)]
    return lines


# --------------------------------------------------------------------------- chat templates
# Copied from (or kept close to) the real checkpoints' chat templates, so that the tiny
# models exercise the same formatting the real ones do.

# Qwen2-VL-7B-Instruct and Qwen2.5-VL-7B-Instruct share this template.
QWEN_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# llava-hf/llava-1.5-7b-hf's template. It does not close the assistant turn with </s>;
# the LLaVA adapter appends it (LLaVA-1.5 was trained with `ASSISTANT: answer</s>`).
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# Llama-3.2-11B-Vision-Instruct's template without the tool-calling branches.
MLLAMA_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- if messages[0]['content'] is string %}{%- set system_message = messages[0]['content'] | trim %}"
    "{%- else %}{%- set system_message = messages[0]['content'][0]['text'] | trim %}{%- endif %}"
    "{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{%- set image_ns = namespace(has_images=false) %}"
    "{%- for message in messages %}{%- if message['content'] is not string %}"
    "{%- for content in message['content'] %}{%- if content['type'] == 'image' %}"
    "{%- set image_ns.has_images = true %}{%- endif %}{%- endfor %}{%- endif %}{%- endfor %}"
    "{%- if system_message or not image_ns.has_images %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{%- if not image_ns.has_images %}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{%- endif %}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for content in message['content'] %}"
    "{%- if content['type'] == 'image' %}{{- '<|image|>' }}"
    "{%- elif content['type'] == 'text' %}{{- content['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

# --------------------------------------------------------------------------- tokenizers

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

QWEN_SPECIALS = _csv(
    "<|endoftext|>, <|im_start|>, <|im_end|>, <|object_ref_start|>, <|object_ref_end|>, "
    "<|box_start|>, <|box_end|>, <|quad_start|>, <|quad_end|>, <|vision_start|>, "
    "<|vision_end|>, <|vision_pad|>, <|image_pad|>, <|video_pad|>"
)
LLAMA3_SPECIALS = _csv(
    "<|begin_of_text|>, <|end_of_text|>, <|reserved_special_token_0|>, "
    "<|reserved_special_token_1|>, <|finetune_right_pad_id|>, <|reserved_special_token_2|>, "
    "<|start_header_id|>, <|end_header_id|>, <|eom_id|>, <|eot_id|>, <|python_tag|>"
)


def _train_bytelevel_bpe(split_regex: str, vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
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
    tok.train_from_iterator(_corpus(), trainer)
    return _vocab_and_merges(tok)


def _train_metaspace_bpe(vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
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
    tok.train_from_iterator(_corpus(), trainer)
    return _vocab_and_merges(tok)


def _vocab_and_merges(tok) -> tuple[dict[str, int], list[tuple[str, str]]]:
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges


def _with_specials(vocab: dict[str, int], specials: list[str]) -> dict[str, int]:
    """Append special tokens at the end of the vocabulary, as the real families place them."""
    out = dict(vocab)
    for s in specials:
        out.setdefault(s, len(out))
    return out


def _pad_to(n: int, multiple: int = 64) -> int:
    return -(-n // multiple) * multiple


def _register_specials(tokenizer, specials: list[str]) -> None:
    """Mark tokens already in the vocabulary as special added tokens (never split, same ids)."""
    from tokenizers import AddedToken

    tokenizer.add_tokens(
        [AddedToken(s, special=True, normalized=False) for s in specials], special_tokens=True
    )


def _qwen_tokenizer():
    from transformers import Qwen2Tokenizer

    vocab, merges = _train_bytelevel_bpe(_QWEN_SPLIT, _BPE_VOCAB)
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


def _llava_tokenizer():
    from transformers import LlamaTokenizer

    vocab, merges = _train_metaspace_bpe(_BPE_VOCAB)
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


def _mllama_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import TokenizersBackend

    vocab, merges = _train_bytelevel_bpe(_LLAMA3_SPLIT, _BPE_VOCAB)
    specials = list(LLAMA3_SPECIALS)
    # Llama-3 reserves special ids up to a round vocabulary size; <|image|> comes right after
    # it (128256 in the real model), an id the text model embeds (vocab_size + 8 rows) but
    # the LM head never predicts.
    n_text = _pad_to(len(vocab) + len(specials))
    specials += [f"<|reserved_special_token_{i}|>" for i in range(3, 3 + n_text - len(vocab) - len(specials))]
    specials.append("<|image|>")
    vocab = _with_specials(vocab, specials)

    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    bos = "<|begin_of_text|>"
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, vocab[bos])]
            ),
        ]
    )
    tok = TokenizersBackend(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        model_max_length=131072,
    )
    _register_specials(tok, specials)
    return tok, n_text


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class TinySize:
    """Dimensions of a tiny model. Heads are 16 wide; ``text_hidden`` and ``vision_hidden``
    must be multiples of 16 and ``image_size`` a multiple of 28 (one Qwen visual token
    covers 28x28 pixels: 14 px patches merged 2x2)."""

    image_size: int = DEFAULT_IMAGE_SIZE
    text_hidden: int = 64
    text_layers: int = 2
    vision_hidden: int = 32
    vision_layers: int = 2

    def validate(self) -> None:
        """ConfigError (key ``model.tiny.<field>``) for a size the builders cannot use."""
        rules = {
            "image_size": (28, "a positive multiple of 28, e.g. 56 or 84"),
            "text_hidden": (16, "a positive multiple of 16, e.g. 64 or 128"),
            "vision_hidden": (16, "a positive multiple of 16, e.g. 32 or 96"),
            "text_layers": (1, "a positive integer"),
            "vision_layers": (1, "a positive integer"),
        }
        for name, (step, what) in rules.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < step or value % step:
                raise ConfigError(
                    f"model.tiny.{name}", f"{value!r} is not {what}", f"set model.tiny.{name} to {what}"
                )

    def text(self, **extra) -> dict:
        heads = self.text_hidden // 16
        return dict(
            hidden_size=self.text_hidden,
            intermediate_size=2 * self.text_hidden,
            num_hidden_layers=self.text_layers,
            num_attention_heads=heads,
            # grouped-query attention as in all four real families
            num_key_value_heads=max(1, heads // 2),
            max_position_embeddings=4096,
            **extra,
        )


@dataclass(frozen=True)
class _Built:
    model: object
    processor: object


def _qwen_family(family: str, size: TinySize) -> _Built:
    import transformers as tf

    tok = _qwen_tokenizer()
    ids = tok.convert_tokens_to_ids
    text = size.text(
        vocab_size=_pad_to(len(tok)),
        # head_dim 16 -> 8 rotary frequencies split over (temporal, height, width), in the
        # proportions of the real [16, 24, 24] split for head_dim 128.
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|endoftext|>"),
    )
    common = dict(
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    patches = dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    vision_heads = size.vision_hidden // 16
    if family == "qwen2_vl":
        vision = dict(
            depth=size.vision_layers,
            embed_dim=size.vision_hidden,
            hidden_size=size.text_hidden,  # the merger projects into the LM width
            num_heads=vision_heads,
            mlp_ratio=2,
            **patches,
        )
        config = tf.Qwen2VLConfig(text_config=text, vision_config=vision, **common)
        model_cls, proc_cls = tf.Qwen2VLForConditionalGeneration, tf.Qwen2VLProcessor
    else:
        vision = dict(
            depth=size.vision_layers,
            hidden_size=size.vision_hidden,
            intermediate_size=2 * size.vision_hidden,
            num_heads=vision_heads,
            out_hidden_size=size.text_hidden,
            # Qwen2.5-VL alternates windowed and full attention blocks; the last block here
            # attends fully, the others within 56 px windows.
            window_size=56,
            fullatt_block_indexes=[size.vision_layers - 1],
            **patches,
        )
        config = tf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
        model_cls, proc_cls = tf.Qwen2_5_VLForConditionalGeneration, tf.Qwen2_5_VLProcessor
    model = model_cls(config)
    # A square image_size x image_size picture keeps (image_size / 28)^2 visual tokens;
    # larger ones are scaled down to that pixel budget, as max_pixels does for real models.
    pixels = dict(min_pixels=28 * 28, max_pixels=size.image_size**2)
    grid = dict(patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = proc_cls(
        image_processor=tf.Qwen2VLImageProcessor(**grid, **pixels),
        tokenizer=tok,
        # transformers 5.x's Qwen processors require a video processor even for images only.
        video_processor=tf.Qwen2VLVideoProcessor(**grid, **pixels),
        chat_template=QWEN_VL_TEMPLATE,
    )
    return _Built(model, processor)


def _llava(size: TinySize) -> _Built:
    import transformers as tf

    tok = _llava_tokenizer()
    patch = 14
    vision = tf.CLIPVisionConfig(
        hidden_size=size.vision_hidden,
        intermediate_size=2 * size.vision_hidden,
        num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_hidden // 16,
        image_size=size.image_size,
        patch_size=patch,
        projection_dim=size.vision_hidden,
    )
    text = tf.LlamaConfig(
        **size.text(
            vocab_size=_pad_to(len(tok)),
            bos_token_id=tok.convert_tokens_to_ids("<s>"),
            eos_token_id=tok.convert_tokens_to_ids("</s>"),
            pad_token_id=tok.convert_tokens_to_ids("<pad>"),
        )
    )
    config = tf.LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=(size.image_size // patch) ** 2,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",  # drop CLIP's class token, as LLaVA-1.5
        # Penultimate CLIP layer, as LLaVA-1.5: the last layer's weights get no gradient.
        vision_feature_layer=-2,
    )
    model = tf.LlavaForConditionalGeneration(config)
    image_processor = tf.CLIPImageProcessor(
        size={"shortest_edge": size.image_size},
        crop_size={"height": size.image_size, "width": size.image_size},
        do_center_crop=True,
    )
    processor = tf.LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=patch,
        vision_feature_select_strategy="default",
        # CLIP prepends a class token to the patch features: the processor counts it (+1)
        # and the "default" strategy removes it again (-1), so the number of <image> tokens
        # equals the number of patch features the projector emits. With 0 the prompt holds
        # one <image> token too few and the model raises a token/feature count mismatch.
        num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    )
    return _Built(model, processor)


def _mllama(size: TinySize) -> _Built:
    import transformers as tf

    tok, n_text = _mllama_tokenizer()
    ids = tok.convert_tokens_to_ids
    vision = dict(
        hidden_size=size.vision_hidden,
        intermediate_size=2 * size.vision_hidden,
        num_hidden_layers=size.vision_layers,
        num_global_layers=1,
        attention_heads=size.vision_hidden // 16,
        image_size=size.image_size,  # the tile side
        patch_size=14,
        # The vision output concatenates the last hidden state with these layers' states.
        intermediate_layers_indices=[0],
        vision_output_dim=2 * size.vision_hidden,
        # The default supported aspect ratios are only valid with 4 tiles.
        max_num_tiles=4,
    )
    # Llama-3.2-Vision interleaves gated cross-attention layers (reading the image) with
    # self-attention layers; here one cross-attention layer sits after the first
    # ``text_layers // 2`` self-attention layers (text_layers + 1 layers in all).
    n_layers = size.text_layers + 1
    text = size.text(
        vocab_size=n_text,
        cross_attention_layers=[size.text_layers // 2 or 1],
        # The defaults (128000 ...) lie outside the small vocabulary.
        bos_token_id=ids("<|begin_of_text|>"),
        eos_token_id=ids("<|eot_id|>"),
        pad_token_id=ids("<|finetune_right_pad_id|>"),
    )
    text["num_hidden_layers"] = n_layers
    config = tf.MllamaConfig(vision_config=vision, text_config=text, image_token_index=ids("<|image|>"))
    model = tf.MllamaForConditionalGeneration(config)
    image_processor = tf.MllamaImageProcessor(
        size={"height": size.image_size, "width": size.image_size}, max_image_tiles=4
    )
    processor = tf.MllamaProcessor(
        image_processor=image_processor, tokenizer=tok, chat_template=MLLAMA_TEMPLATE
    )
    return _Built(model, processor)


_BUILDERS: dict[str, Callable[[TinySize], _Built]] = {
    "qwen2_vl": lambda size: _qwen_family("qwen2_vl", size),
    "qwen2_5_vl": lambda size: _qwen_family("qwen2_5_vl", size),
    "llava": _llava,
    "mllama": _mllama,
}


def init_tiny(
    family: str,
    out: str | Path,
    seed: int = 0,
    image_size: int = DEFAULT_IMAGE_SIZE,
    *,
    text_hidden: int = 64,
    text_layers: int = 2,
    vision_hidden: int = 32,
    vision_layers: int = 2,
) -> Path:
    """Write a tiny random checkpoint of ``family`` (model + processor) to ``out``; return ``out``.

    ``image_size`` is the side in pixels the image processor works at (a multiple of 28;
    the Qwen family's ``max_pixels`` is ``image_size**2``, LLaVA's CLIP input and
    Llama-3.2-Vision's tile are ``image_size`` square). The other sizes are described in
    :class:`TinySize`. The weights depend only on ``seed`` and the sizes; the global torch
    RNG is left as it was.
    """
    import torch

    if family not in _BUILDERS:
        raise ConfigError(
            "model.family", f"no tiny builder for {family!r}", f"use one of {list(TINY_FAMILIES)}"
        )
    size = TinySize(image_size, text_hidden, text_layers, vision_hidden, vision_layers)
    size.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        built = _BUILDERS[family](size)
    built.model.save_pretrained(out)
    built.processor.save_pretrained(out)
    return out
