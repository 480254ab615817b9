"""From VQA answers to the texts CLIP encodes: the QAPE post-processing (method.md 3).

Per (image, class) pair:

* **label** - the class name itself, one row.
* **fg** - the lemmatised answers of the foreground templates, in template order. An answer that
  contains none of the class's synonyms (plain substring test; the ``synonyms`` of classes.json,
  which hold the authors' ``supply_cat`` table for VOC) gets the class name appended:
  "passenger" -> "passenger train", "man" -> "man person", "yes" -> "yes cat"; "cattle" stays for
  cat (it contains "cat"), "table" stays for dining table (a synonym). Always one row per template,
  duplicates kept (each weighs 1/L in the foreground mix).
* **bg** - the lemmatised answers of the background templates, exact-string deduplicated, minus
  the answer exactly equal to the class name ("table" stays for dining table, "man" for person).
  A pair left with no background text is, as in the authors' code, skipped (``variant="code"``:
  none of its rows is written; it is listed in ``stats["skipped_pairs"]``), or gets the paper's
  "no {class}" text (``variant="paper"``).

Every text is the answer inside the prompt, ``"a photo of {}."`` by default.

Group filters serve the ablations: ``fg_groups=()`` gives label-only foreground texts,
``bg_groups=("object",)`` background texts from the surrounding-object questions only.

``corpus.parquet`` columns (``CORPUS_COLUMNS``): image_id, class_id, role (label/fg/bg), group and
template_id (null for the label row and the "no {class}" fallback; for a deduplicated bg text, the
first template, in template order, that gave it), answer (the string before prompting), text (as
fed to CLIP). Rows are ordered by image id, class id, then label, fg (template order), bg (first
occurrence in template order).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from qaclims.qape.pairs import class_table, class_texts

CORPUS_COLUMNS = ["image_id", "class_id", "role", "group", "template_id", "answer", "text"]
DEFAULT_PROMPT = "a photo of {}."
VARIANTS = ("code", "paper")


def apply_prompt(prompt: str, answer: str) -> str:
    return prompt.replace("{}", answer)


def synonyms_of(class_text: str, synonyms: Sequence[str] = ()) -> list[str]:
    """The strings that count as naming the class in an answer; the class text always does."""
    out = list(synonyms)
    if class_text not in out:
        out.append(class_text)
    return out


def fg_answer_text(answer: str, class_text: str, synonyms: Sequence[str]) -> str:
    """The authors' foreground rule: append the class name unless a synonym is a substring."""
    if any(s in answer for s in synonyms):
        return answer
    return f"{answer} {class_text}"


def bg_answer_texts(answers: Iterable[str], class_text: str) -> list[int]:
    """Indices (into ``answers``) of the background texts kept: first occurrence of each distinct
    string, except the one exactly equal to the class name."""
    seen: set[str] = set()
    keep = []
    for i, a in enumerate(answers):
        if a in seen or a == class_text:
            continue
        seen.add(a)
        keep.append(i)
    return keep


def _resolve_groups(answers: pd.DataFrame, role: str, groups: Sequence[str] | None) -> list[str]:
    present = (
        answers.loc[answers["role"] == role, "group"].drop_duplicates().tolist()
        if len(answers) else []
    )
    if groups is None:
        return present
    groups = [groups] if isinstance(groups, str) else list(groups)
    other = set(answers.loc[answers["role"] != role, "group"]) if len(answers) else set()
    for g in groups:
        if g in other:
            raise ValueError(f"group {g!r} is not a {role} group; {role} groups: {present}")
        if g not in present:
            raise ValueError(
                f"no {role} answers of group {g!r}; the answers hold {role} groups {present}"
            )
    return groups


def build_corpus(
    answers: pd.DataFrame,
    classes: Any,
    *,
    variant: str = "code",
    fg_groups: Sequence[str] | None = None,
    bg_groups: Sequence[str] | None = None,
    prompt: str = DEFAULT_PROMPT,
    synonyms: Mapping[str, Sequence[str]] | None = None,
    top_k: int = 10,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Corpus rows and statistics from an answers table (see module docstring).

    ``classes``: as :func:`qaclims.qape.pairs.class_table` takes them (the classes.json content).
    ``fg_groups``/``bg_groups`` None means every group of that role found in ``answers``; an empty
    sequence means none. ``synonyms`` (class text -> strings) replaces the synonyms of the classes
    it names.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {list(VARIANTS)}, got {variant!r}")
    if prompt.count("{}") != 1:
        raise ValueError(f"prompt must contain {{}} exactly once, got {prompt!r}")
    table = class_table(classes)
    names = {i: c.text for i, c in table.items()}
    syn_of = {
        i: synonyms_of(c.text, (synonyms or {}).get(c.text, c.synonyms)) for i, c in table.items()
    }
    unknown_syn = sorted(set(synonyms or {}) - set(names.values()))
    if unknown_syn:
        raise ValueError(f"synonyms given for unknown class(es) {unknown_syn}; classes: "
                         f"{sorted(names.values())}")
    fg_groups = _resolve_groups(answers, "fg", fg_groups)
    bg_groups = _resolve_groups(answers, "bg", bg_groups)
    unknown = sorted(set(answers["class_id"].astype(int)) - set(names)) if len(answers) else []
    if unknown:
        raise ValueError(f"answers hold class ids {unknown} not in the class list")

    df = answers.sort_values(["image_id", "class_id"], kind="stable", ignore_index=True)
    image_ids = df["image_id"].astype(str).to_numpy()
    class_ids = df["class_id"].astype("int64").to_numpy()
    roles = df["role"].astype(str).to_numpy()
    groups = df["group"].astype(str).to_numpy()
    tids = df["template_id"].astype(str).to_numpy()
    lemmas = df["answer"].astype(str).to_numpy()
    fg_set, bg_set = set(fg_groups), set(bg_groups)

    if len(df):
        change = np.flatnonzero(
            (image_ids[1:] != image_ids[:-1]) | (class_ids[1:] != class_ids[:-1])
        ) + 1
        starts = np.concatenate([[0], change])
        ends = np.concatenate([change, [len(df)]])
    else:
        starts = ends = np.array([], dtype=np.int64)

    rows: list[tuple] = []
    skipped: list[dict[str, Any]] = []
    n_appended = 0
    n_empty_bg = 0
    fg_counts: Counter[int] = Counter()
    bg_counts: Counter[int] = Counter()
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        image_id, class_id = image_ids[s], int(class_ids[s])
        class_text = names[class_id]
        syn = syn_of[class_id]
        fg_idx = [i for i in range(s, e) if roles[i] == "fg" and groups[i] in fg_set]
        bg_idx = [i for i in range(s, e) if roles[i] == "bg" and groups[i] in bg_set]

        pair_rows = [(image_id, class_id, "label", None, None, class_text,
                      apply_prompt(prompt, class_text))]
        appended = 0
        for i in fg_idx:
            a = fg_answer_text(lemmas[i], class_text, syn)
            appended += a != lemmas[i]
            pair_rows.append(
                (image_id, class_id, "fg", groups[i], tids[i], a, apply_prompt(prompt, a))
            )
        kept = [bg_idx[k] for k in bg_answer_texts([lemmas[i] for i in bg_idx], class_text)]
        if not kept:
            n_empty_bg += 1
            if variant == "code":
                skipped.append(
                    {"image_id": image_id, "class_id": class_id, "class_text": class_text}
                )
                continue
            fallback = f"no {class_text}"
            pair_rows.append((image_id, class_id, "bg", None, None, fallback,
                              apply_prompt(prompt, fallback)))
        for i in kept:
            pair_rows.append((image_id, class_id, "bg", groups[i], tids[i], lemmas[i],
                              apply_prompt(prompt, lemmas[i])))
        n_appended += appended
        fg_counts[len(fg_idx)] += 1
        bg_counts[len(pair_rows) - 1 - len(fg_idx)] += 1
        rows.extend(pair_rows)

    n_pairs = len(starts)
    if n_pairs and not fg_counts:
        raise ValueError(
            f"no (image, class) pair has a background text with bg_groups={bg_groups}: all "
            f"{n_pairs} pairs would be skipped; use variant='paper' for the 'no {{class}}' fallback"
        )
    corpus = pd.DataFrame(rows, columns=CORPUS_COLUMNS)
    corpus["class_id"] = corpus["class_id"].astype("int64")

    stats = {
        "variant": variant,
        "prompt": prompt,
        "fg_groups": list(fg_groups),
        "bg_groups": list(bg_groups),
        "pairs": n_pairs,
        "pairs_used": n_pairs - len(skipped),
        "empty_background_pairs": n_empty_bg,
        "skipped_pairs": skipped,
        "fg_answers_with_class_appended": n_appended,
        # the authors keep empty answers (" cat", "a photo of ."); counted so a report shows them
        "empty_answers": int((df["answer"].astype(str) == "").sum()) if len(df) else 0,
        "rows": len(corpus),
        "unique_texts": int(corpus["text"].nunique()),
        "texts_per_pair": {
            "fg": {str(k): v for k, v in sorted(fg_counts.items())},
            "bg": {str(k): v for k, v in sorted(bg_counts.items())},
            "bg_mean": (sum(k * v for k, v in bg_counts.items()) / max(1, sum(bg_counts.values()))),
        },
        "top_answers": top_answers(df, names, top_k=top_k),
    }
    return corpus, stats


def top_answers(answers: pd.DataFrame, classes: Any, top_k: int = 10) -> dict[str, dict[str, list]]:
    """class name -> group -> [[lemmatised answer, count], ...], most frequent first (ties by
    answer), over every answer row (before any filtering or post-processing)."""
    names = class_texts(classes)
    out: dict[str, dict[str, list]] = {}
    if not len(answers):
        return out
    counts = (
        answers.groupby(["class_id", "group", "answer"], sort=False).size().reset_index(name="n")
    )
    counts = counts.sort_values(["class_id", "group", "n", "answer"],
                                ascending=[True, True, False, True])
    for (class_id, group), sub in counts.groupby(["class_id", "group"], sort=False):
        out.setdefault(names[int(class_id)], {})[str(group)] = [
            [a, int(n)] for a, n in zip(sub["answer"][:top_k], sub["n"][:top_k], strict=True)
        ]
    return out


def build_corpus_files(
    answers_paths: Sequence[str],
    classes_path: str,
    corpus_path: str,
    stats_path: str,
    **options: Any,
) -> dict[str, Any]:
    """The ``corpus`` rule: answer shards + classes.json -> corpus.parquet + stats JSON.
    ``options`` go to :func:`build_corpus` (variant, fg_groups, bg_groups, prompt, synonyms)."""
    from qaclims.data.manifest import read_classes
    from qaclims.qape.answers import read_answers
    from qaclims.store import write_json, write_parquet

    corpus, stats = build_corpus(read_answers(list(answers_paths)), read_classes(classes_path),
                                 **options)
    write_parquet(corpus, corpus_path)
    write_json(stats, stats_path)
    return stats
