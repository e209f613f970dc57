"""The text the tiny tokenizers are trained on: a few hundred lines of medical VQA-style text.

The words cover what the prompts of the synthetic world and of Med-MAT say (modalities, areas,
findings, option lines, the answer instruction, chat roles), so that the trained BPE splits
them into few tokens, as a real tokenizer would. The corpus is deterministic: the same lines
in the same order on every call, which keeps the trained tokenizers (and checkpoints) identical.
"""

from __future__ import annotations

from cgmed.data.choices import ANSWER_SUFFIX, LETTERS


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",")]


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
# Fixed lines: the vocabulary above, the chat templates' system texts, and the punctuation,
# digits and box notation that answers and options use.
_FIXED_LINES = [
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


def corpus() -> list[str]:
    """The training lines: the fixed lines, then each question asked about each modality as
    a multiple-choice prompt, a LLaVA-style turn and an answer line, then the word lists."""
    lines = list(_FIXED_LINES)
    for q_index, question in enumerate(_QUESTIONS):
        for m_index, modality in enumerate(_MODALITIES):
            area = _AREAS[(q_index * 7 + m_index) % len(_AREAS)]
            options = [_FINDINGS[(q_index * 5 + m_index * 3 + k) % len(_FINDINGS)] for k in range(4)]
            letter = LETTERS[(q_index + m_index) % 4]
            text = question.format(a=area, m=modality)
            body = "\n".join(f"{LETTERS[k]}: {option}" for k, option in enumerate(options))
            lines.append(f"{text}\n{body}\n{ANSWER_SUFFIX}")
            lines.append(f"USER: {text} ASSISTANT: {letter}")
            lines.append(f"{letter}. {options[0]} {letter}")
    lines += [" ".join(LETTERS[:4]), " ".join(_FINDINGS), " ".join(_AREAS), " ".join(_MODALITIES)]
    return lines
