"""Reading model answers: the option letter of a multiple-choice answer.

:func:`parse_choice` maps a generated free-text answer to the letter of one option (or None);
:func:`parse_choice_detail` also says why. Boxes are read by :func:`cgmed.data.boxes.parse_box`.
Everything here is deterministic pure Python (it runs on every generated answer).

How an answer is read, rule by rule in order:

1. Markdown (``*``, backticks, ``__``) is dropped; blank text is ``"empty"``.
2. Option texts are found as whole word sequences, case-insensitive, ignoring punctuation
   other than ``+ % < > =`` ("Level 1" never matches inside "Level 10", "normal" never
   inside "abnormal"); a comma-joined multi-label also matches in any part order. A match
   contained in a longer match is dropped ("no tumor" names "No tumor", not "Tumor"). The
   matched text is masked, so letters inside option texts are never letters.
   A **negated** mention denies its option instead of naming it: a negator before it ("no",
   "not", "n't", "never", "without", "neither", "nor", "absence of", "free of", "negative for",
   with fillers such as "a", "any", "evidence of", "show" between) or a denial after it ("is
   absent", "is not present / seen / visible / detected / found ...", "ruled out", "negative").
   So does a letter after "not" ("not A", "not option A"). A denied option is never chosen, and
   its counterpart ("Normal", "Non-tumor", the other one of two) is never guessed from it.
3. Declared letters: a line that is only a letter in either case, with optional brackets
   or punctuation (``B``, ``b``, ``(B)``, ``[B]``, ``B.``, ``B)``); a line starting with a
   delimited letter (``B. Cyst``, ``B: Cyst``, ``B) Cyst``, ``(B) Cyst``; not ``E.g.``);
   an answer statement (``Answer: B``, ``The answer is B.``, ``The correct option is (B)``,
   ``option B``). In an answer statement a letter followed by a word must be a capital
   B-J, or ``A`` after option/choice/letter: "the answer is a cyst" holds no letter.
4. A refusal (``I'm sorry``, ``I cannot ...``, ``unable to determine``, ``As an AI``,
   ``none of the above``, ...) is ``"refusal"`` unless a letter is declared (rule 3): an
   explicit answer beats a hedge.
5. Two different letters offered together (``A or B``, ``A/B``, ``(A) and (C)``, also out of
   range ones) are ``"ambiguous"``.
6. If letters are declared: two different ones are ``"ambiguous"``; one beyond the options
   (``E`` with four options, any of A-Z) is ``"out_of_range"``.
7. Otherwise other in-range mentions count: a bracketed letter ``(b)`` or a bare capital in
   running text (``I think it's B``), but not the article ``A`` (an ``A`` followed by a word
   other than or/and/is/...; ``A cyst is visible.`` names Cyst by text), not the pronoun ``I``
   (unless there are 9+ options), not abbreviations (``E. coli``), never a lowercase bare
   letter, and never a letter inside a word (``B-cell``, ``I'm``). Two different ones are
   ``"ambiguous"``; mentions beyond the options are ignored.
8. A letter from rule 6 or 7 must agree with the option texts (chosen: contradictions are
   None, reason ``"ambiguous"``): an option text attached to it (``B: Tumor``, ``Tumor (B)``)
   must be its own, and if the answer names any option text, one must be its own (``B. The
   lesion is a tumor`` with B = Cyst is None; ``B. Cyst, not a tumor`` is B).
   A letter whose own option the text denies (``A. There is no tumor.`` with A = Tumor) is
   None, reason ``"negated"``.
9. Without a letter: exactly one option named (not denied) is ``"option_text"``; several are
   ``"ambiguous"`` (``Cyst and Tumor``); none is ``"negated"`` when the answer denies an option
   (``There is no tumor.``: unparsed, and counted wrong, rather than read as ``Normal``), else
   ``"no_match"``.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Sequence

from cgmed.data.choices import LETTERS

#: The reasons :func:`parse_choice_detail` returns.
REASONS = ("letter", "option_text", "ambiguous", "refusal", "out_of_range", "negated", "empty", "no_match")

_MARKUP = re.compile(r"\*+|`+|__+")
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"'})
# Word tokens for option-text matching: runs of letters/digits, plus symbols that carry meaning
# in labels ("Grade 0+", "> 50%"); other punctuation (commas, hyphens, dots) only separates.
_TOKEN = re.compile(r"[^\W_]+|[+%<>=\u00b1\u2264\u2265]")
# Words that may follow a letter used as a letter ("A or B", "A is correct"); after "A" any
# other word makes it the English article ("A cyst is visible").
_FOLLOWERS = frozenset(
    {
        "or", "and", "nor", "is", "was", "would", "seems", "appears", "looks", "might", "may",
        "could", "should", "must", "will", "fits", "matches", "vs", "versus", "because", "since",
        "then",
    }
)  # fmt: skip
_NEXT_WORD = re.compile(r"[ \t]+(\w+)")
# A line that is only a letter, with punctuation/brackets: "B", "b", "(B)", "[B]", "B.", "B)".
_LONE_LINE = re.compile(r"^[^\w\n]*([A-Za-z])[^\w\n]*$", re.M)
# A line that starts with a delimited letter: "B. Cyst", "B: Cyst", "B) Cyst", "(B) Cyst", "- B - x".
# "E.g." / "I.e." are not letters.
_LEADING = re.compile(
    r"^[ \t>\-\u2022]*(?:[(\[{][ \t]*([A-Za-z])[ \t]*[)\]}]|([A-Za-z])[ \t]*(?:[.](?![A-Za-z]\.)|[:)\]]|[ \t][-\u2013\u2014][ \t]))",
    re.M,
)
# An answer statement: "Answer: B", "The answer is B", "correct option is (B)", "option B".
_CUE = re.compile(
    r"\b(answer|option|choice|letter)s?\b"
    r"(?:[ \t]+(?:is|would[ \t]+be|should[ \t]+be|will[ \t]+be|must[ \t]+be|seems[ \t]+to[ \t]+be"
    r"|appears[ \t]+to[ \t]+be|be))?"
    r"[ \t]*[:=\-\u2013\u2014]?[ \t]*"
    r"(?:(?:option|choice|letter)[ \t]+)?"
    r"([(\[{][ \t]*)?([A-Za-z])(?![\w'-])",
    re.I,
)
# Any other mention: a bracketed letter "(b)" or a bare capital "B" in running text.
_WEAK = re.compile(r"(?<![\w'-])(?:[(\[{][ \t]*([A-Ja-j])[ \t]*[)\]}]|([A-J]))(?![\w'-])")
_ABBREV = re.compile(r"\.(?:[A-Za-z]\.|\s+[a-z])")  # "E. coli", "U.S." after a capital
# Two letters offered together: "A or B", "A/B", "(A) and (B)", "A, B".
_DISJ = re.compile(
    r"(?<![\w'-])[(\[]?([A-Ja-j])[)\]]?[ \t]*"
    r"(?:,|/|&|\bor\b|\band\b|\bnor\b|\bvs\b\.?|\bversus\b)[ \t]*(?:(?:or|and)[ \t]+)?"
    r"[(\[]?([A-Ja-j])[)\]]?(?![\w'-])"
)
_REFUSAL = re.compile(
    r"\b(?:i[ \t]*(?:'m|am)[ \t]+(?:sorry|unable|not[ \t]+able|not[ \t]+sure)"
    r"|sorry\b"
    r"|i[ \t]+(?:cannot|can[ \t]*not|can't|could[ \t]*not|couldn't|do[ \t]*n[o']t[ \t]+know)"
    r"|unable[ \t]+to[ \t]+(?:determine|tell|say|answer|provide|identify|diagnose|assess|see)"
    r"|(?:cannot|can't|can[ \t]+not)[ \t]+(?:be[ \t]+)?(?:determine|tell|say|answer|provide|identify|diagnose)"
    r"|not[ \t]+possible[ \t]+to[ \t]+(?:determine|tell|say)"
    r"|as[ \t]+an[ \t]+ai\b"
    r"|none[ \t]+of[ \t]+the[ \t]+(?:above|options|choices)"
    r"|(?:insufficient|not[ \t]+enough)[ \t]+information)",
    re.I,
)
# Negation (rule 2): a negator and optional fillers right before an option mention, or a denial
# right after it. Searched in a short window before the mention ("There is no evidence of a tumor").
_NEGATION_FILLERS = (
    r"a|an|the|any|some|evidence|signs?|indications?|features?|of|obvious|visible|apparent|clear|"
    r"definite|significant|show|shows|showing|have|has|contain|contains|see|seen|appear|appears|"
    r"indicate|indicates|suggest|suggests|demonstrate|demonstrates|look|looks|like|be|is|are|there"
)
_NEGATED_BEFORE = re.compile(
    r"(?:\b(?:no|not|never|without|neither|nor|absence[ \t]+of|free[ \t]+of|negative[ \t]+for)|n't)"
    rf"(?:[ \t]+(?:{_NEGATION_FILLERS}))*[ \t]*$",
    re.I,
)
_NEGATED_AFTER = re.compile(
    r"[ \t]*(?:(?:is|are|was|were|has[ \t]+been|have[ \t]+been)[ \t]+)?"
    r"(?:absent|ruled[ \t]+out|excluded|negative"
    r"|not[ \t]+(?:present|seen|visible|detected|found|identified|observed|evident|shown|noted))\b",
    re.I,
)
_NEGATION_WINDOW = 80  # characters before a mention searched for its negator
# A letter denied: "not A", "not option (A)".
_NEGATED_LETTER = re.compile(r"\bnot[ \t]+(?:(?:option|choice|letter)[ \t]+)?[(\[{]?[ \t]*$", re.I)
_ATTACHED_AFTER = re.compile(r"[\s.:)\]}\-\u2013\u2014,=]*")
_ATTACHED_BEFORE = re.compile(r"[\s(\[{\-\u2013\u2014:,]*")


@functools.lru_cache(maxsize=4096)
def _option_patterns(options: tuple[str, ...]) -> tuple[tuple[tuple[str, ...], int], ...]:
    """Token sequences naming each option; a comma-joined multi-label also in any part order."""
    pats: list[tuple[tuple[str, ...], int]] = []
    for i, opt in enumerate(options):
        seqs = {tuple(t.lower() for t in _TOKEN.findall(opt))}
        parts = [p for p in opt.split(",") if _TOKEN.search(p)]
        if 2 <= len(parts) <= 4:
            for perm in itertools.permutations(parts):
                seqs.add(tuple(t.lower() for p in perm for t in _TOKEN.findall(p)))
        pats.extend((seq, i) for seq in sorted(seqs) if seq)
    return tuple(pats)


def _option_spans(text: str, options: tuple[str, ...]) -> tuple[list[tuple[int, int, int]], str]:
    """Option mentions in ``text`` as (char start, char end, option index), and ``text`` with
    every mention masked by ``_`` (so letters inside option texts are not read as letters).

    Matching is on whole word tokens, case-insensitive; a mention contained in a longer mention
    (of any option) is dropped, so "no tumor" names "No tumor" and not "Tumor".
    """
    toks = list(_TOKEN.finditer(text))
    if not toks:
        return [], text
    words = [m.group().lower() for m in toks]
    where: dict[str, list[int]] = {}
    for k, w in enumerate(words):
        where.setdefault(w, []).append(k)
    found: set[tuple[int, int, int]] = set()
    for seq, i in _option_patterns(options):
        n = len(seq)
        for k in where.get(seq[0], ()):
            if tuple(words[k : k + n]) == seq:
                found.add((k, k + n, i))
    if not found:
        return [], text
    kept = [
        s
        for s in found
        if not any(o[0] <= s[0] and s[1] <= o[1] and o[1] - o[0] > s[1] - s[0] for o in found)
    ]
    chars = list(text)
    for a, b, _ in found:
        for c in range(toks[a].start(), toks[b - 1].end()):
            chars[c] = "_"
    spans = sorted((toks[a].start(), toks[b - 1].end(), i) for a, b, i in kept)
    return spans, "".join(chars)


def _negated(s: str, start: int, end: int) -> bool:
    """True when the option mention ``s[start:end]`` is denied ("no tumor", "tumor is absent")."""
    before = s[max(0, start - _NEGATION_WINDOW) : start]
    return bool(_NEGATED_BEFORE.search(before) or _NEGATED_AFTER.match(s, end))


def _split_negated(s: str, spans: list[tuple[int, int, int]]) -> tuple[list[tuple[int, int, int]], set[int]]:
    """The option mentions that name their option, and the indices of the options denied."""
    named, denied = [], set()
    for span in spans:
        if _negated(s, span[0], span[1]):
            denied.add(span[2])
        else:
            named.append(span)
    return named, denied


def _next_word(s: str, pos: int) -> str | None:
    m = _NEXT_WORD.match(s, pos)
    return m.group(1).lower() if m else None


def _reads_as_word(s: str, ch: str, end: int) -> bool:
    """True when an undelimited ``A``/``a`` is the article or ``I``/``i`` the pronoun: a word
    other than a connective ("or", "is", ...) follows it."""
    if ch not in "AaIi":
        return False
    w = _next_word(s, end)
    return w is not None and w not in _FOLLOWERS


def _declared(s: str) -> list[tuple[str, int, int]]:
    """Letters stated as the answer: lone-letter lines, lines starting with a delimited letter,
    and answer statements. Returns (upper-case letter, start, end) in text order."""
    out: list[tuple[str, int, int]] = []
    for m in _LONE_LINE.finditer(s):
        out.append((m.group(1).upper(), m.start(1), m.end(1)))
    for m in _LEADING.finditer(s):
        g = 1 if m.group(1) else 2
        out.append((m.group(g).upper(), m.start(g), m.end(g)))
    for m in _CUE.finditer(s):
        ch, end = m.group(3), m.end(3)
        if not m.group(2) and _next_word(s, end) not in (None, *_FOLLOWERS):
            # "the answer is a cyst": only a capital B-J (or "option A") is a letter before a word
            keyword = m.group(1).lower()
            if ch.islower() or ch == "I" or ch not in LETTERS or (ch == "A" and keyword == "answer"):
                continue
        out.append((ch.upper(), m.start(3), end))
    return sorted(set(out), key=lambda t: t[1])


def _mentioned(s: str, n: int, denied: set[int]) -> list[tuple[str, int, int]]:
    """Other in-range letter mentions: bracketed "(b)", bare capitals in running text (not the
    article "A", not "I" unless there are 9+ options, not abbreviations like "E. coli"). A letter
    after "not" is no mention: its option goes into ``denied``."""
    out: list[tuple[str, int, int]] = []
    for m in _WEAK.finditer(s):
        if m.group(1):
            ch, a, b = m.group(1).upper(), m.start(1), m.end(1)
        else:
            ch, a, b = m.group(2), m.start(2), m.end(2)
            if (ch == "I" and n <= 8) or _reads_as_word(s, ch, b) or _ABBREV.match(s, b):
                continue
        if LETTERS.index(ch) >= n:
            continue
        if _NEGATED_LETTER.search(s[max(0, m.start() - _NEGATION_WINDOW) : m.start()]):
            denied.add(LETTERS.index(ch))
        else:
            out.append((ch, a, b))
    return out


def _disjunction(s: str, n: int) -> bool:
    """True when two different letters are offered together ("A or B", "A/B", "(A) and (C)")."""
    for m in _DISJ.finditer(s):
        x, y = m.group(1), m.group(2)
        if x.upper() == y.upper():
            continue
        ok = True
        for ch, end in ((x, m.end(1)), (y, m.end(2))):
            if (ch in "Ii" and n <= 8) or _reads_as_word(s, ch, end):
                ok = False
        if ok:
            return True
    return False


def _consistent(s: str, letters: list[tuple[str, int, int]], spans: list[tuple[int, int, int]]) -> bool:
    """The letter agrees with the option texts: no option text attached to it ("B: Tumor",
    "Tumor (B)") is another option's, and if the text names options, it names the letter's."""
    idx = LETTERS.index(letters[0][0])
    if not spans:
        return True
    for _, a, b in letters:
        for s0, s1, i in spans:
            after = s0 >= b and _ATTACHED_AFTER.fullmatch(s, b, s0)
            before = s1 <= a and _ATTACHED_BEFORE.fullmatch(s, s1, a)
            if (after or before) and i != idx:
                return False
    return any(i == idx for _, _, i in spans)


def parse_choice_detail(text: str | None, options: Sequence[str]) -> tuple[str | None, str]:
    """The option letter a free-text answer means, and why: ``(letter | None, reason)``.

    ``options`` are the option texts in shown order (letter i is ``"ABCDEFGHIJ"[i]``). Reasons:
    ``"letter"``, ``"option_text"`` (an answer), ``"ambiguous"``, ``"refusal"``,
    ``"out_of_range"``, ``"negated"``, ``"empty"``, ``"no_match"`` (no answer). The rules are
    listed in the module docstring (rule numbers below refer to them).
    """
    if text is None:
        return None, "empty"
    s = _MARKUP.sub("", str(text)).translate(_QUOTES).strip()  # rule 1
    if not s:
        return None, "empty"
    opts = tuple(str(o) for o in options)
    spans, masked = _option_spans(s, opts)  # rule 2
    spans, denied = _split_negated(s, spans)
    declared = _declared(masked)  # rule 3
    if not declared and _REFUSAL.search(masked):  # rule 4
        return None, "refusal"
    if _disjunction(masked, len(opts)):  # rule 5
        return None, "ambiguous"
    by_letter = _letter_answer(masked, declared, spans, len(opts), denied)  # rules 6-8
    return by_letter if by_letter is not None else _option_text_answer(spans, denied)  # rule 9


def _letter_answer(
    masked: str,
    declared: list[tuple[str, int, int]],
    spans: list[tuple[int, int, int]],
    n: int,
    denied: set[int],
) -> tuple[str | None, str] | None:
    """Rules 6-8: the declared letter, or else the letters mentioned, checked against the option
    texts (``spans``: the options named; ``denied``: the options denied, to which letters after
    "not" are added); None when the answer holds no letter."""
    letters = declared
    if declared:
        if len({t[0] for t in declared}) > 1:
            return None, "ambiguous"
        if LETTERS.find(declared[0][0]) not in range(n):
            return None, "out_of_range"
    else:
        letters = _mentioned(masked, n, denied)
        if len({t[0] for t in letters}) > 1:
            return None, "ambiguous"
    if not letters:
        return None
    if LETTERS.index(letters[0][0]) in denied:
        return None, "negated"
    if not _consistent(masked, letters, spans):
        return None, "ambiguous"
    return letters[0][0], "letter"


def _option_text_answer(spans: list[tuple[int, int, int]], denied: set[int]) -> tuple[str | None, str]:
    """Rule 9: exactly one option named by its text is the answer; several are ambiguous; none,
    where the answer denies an option, is unparsed for that reason."""
    named = {i for _, _, i in spans}
    if len(named) == 1:
        return LETTERS[named.pop()], "option_text"
    if named:
        return None, "ambiguous"
    return None, "negated" if denied else "no_match"


def parse_choice(text: str | None, options: Sequence[str]) -> str | None:
    """The option letter ``text`` means, or None (ambiguous, refusal, out of range, no answer).

    The rules are listed in the module docstring; :func:`parse_choice_detail` also gives the reason."""
    return parse_choice_detail(text, options)[0]
