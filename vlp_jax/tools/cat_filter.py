"""DiHT's CAT filter (Radenovic et al., CVPR 2023): keep an image-text pair only if its caption is
Complex enough, describes an Action, and the Text written in the image does not repeat it.

    python -m vlp_jax.tools.cat_filter --input ANN.json --images DIR --output OUT.json \
        [--min_complexity 2] [--require_action] [--max_text_overlap 0.2] [--workers N]

Criteria, checked in this order (cheapest first; each pair is charged to the first it fails):
  - complexity C: the caption's dependency parse (spaCy, `--spacy_model`); C is the largest
    number of modifier/argument edges on one noun (children other than det/punct/case/cc). Keep
    if C ≥ `--min_complexity`. "a dog" has C = 0; "a brown dog on the grass" has C = 2.
  - action A: a VERB in the parse (an auxiliary "is" does not count).
  - text spotting T: OCR of the image (RapidOCR, models inside its wheel); drop the pair when the
    Jaccard overlap of the OCR words and the caption words exceeds `--max_text_overlap`.
A record with several captions is one pair per caption; kept pairs are written one per line
(JSON lines, which `vlp_jax.data.annotations` reads like a JSON list). Unreadable images are
dropped and counted. The input streams in chunks through `--workers` processes, so memory is
constant; progress is committed after every chunk, and a rerun resumes where it stopped. A
summary (`OUT.json.summary.json`) records the thresholds and how many pairs each criterion
removed. Needs the `[filter]` extra: spaCy with an English model, and rapidocr-onnxruntime.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import multiprocessing
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from absl import app, flags
from PIL import Image

from vlp_jax.data import annotations

REASONS = ("complexity", "action", "text_overlap", "unreadable_image")
_NON_EDGES = {"det", "punct", "case", "cc", "predet"}
_WORD = re.compile(r"[a-z0-9]+")


@dataclasses.dataclass(frozen=True)
class Thresholds:
    min_complexity: int = 2
    require_action: bool = True
    max_text_overlap: float = 0.2


def complexity(doc) -> int:
    """The largest number of modifier/argument edges on any noun of a spaCy parse."""
    edges = [
        sum(child.dep_ not in _NON_EDGES for child in tok.children)
        for tok in doc
        if tok.pos_ in ("NOUN", "PROPN")
    ]
    return max(edges, default=0)


def has_action(doc) -> bool:
    return any(tok.pos_ == "VERB" for tok in doc)


def words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def text_overlap(ocr_text: str, caption: str) -> float:
    """Jaccard overlap of the word sets (0 when the image has no text)."""
    a, b = words(ocr_text), words(caption)
    return len(a & b) / len(a | b) if a and b else 0.0


class CatFilter:
    """The three criteria with their models loaded once (one instance per worker process)."""

    def __init__(
        self, spacy_model: str, thresholds: Thresholds, use_ocr: bool = True, ocr_threads: int = 0
    ):
        import spacy

        try:
            self.nlp = spacy.load(spacy_model, disable=["ner", "lemmatizer"])
        except OSError as e:
            raise SystemExit(
                f"spaCy model {spacy_model!r} is not installed ({e}); e.g. "
                "`python -m spacy download en_core_web_sm`, or pass --spacy_model"
            ) from None
        self.thresholds = thresholds
        self.ocr = None
        if use_ocr:
            from rapidocr_onnxruntime import RapidOCR

            # One process per core scales; several onnxruntime thread pools per core do not.
            threads = {"intra_op_num_threads": ocr_threads} if ocr_threads > 0 else {}
            self.ocr = RapidOCR(**threads)

    def image_text(self, image: np.ndarray) -> str:
        result, _ = self.ocr(image)
        return " ".join(text for _, text, _ in result or [])

    def reason(self, caption: str, image_path: str) -> str | None:
        """Why the pair is dropped (a name in REASONS), or None to keep it."""
        doc = self.nlp(caption)
        if complexity(doc) < self.thresholds.min_complexity:
            return "complexity"
        if self.thresholds.require_action and not has_action(doc):
            return "action"
        if self.ocr is None:
            return None
        try:
            with Image.open(image_path) as im:
                image = np.asarray(im.convert("RGB"))
        except (OSError, ValueError):
            return "unreadable_image"
        if text_overlap(self.image_text(image), caption) > self.thresholds.max_text_overlap:
            return "text_overlap"
        return None


# ---------------------------------------------------------------------------------------------
# Streaming, parallel, resumable driver.

_worker: CatFilter | None = None


def _init_worker(spacy_model: str, thresholds: Thresholds, use_ocr: bool, threads: int) -> None:
    global _worker
    _worker = CatFilter(spacy_model, thresholds, use_ocr, ocr_threads=threads)


def _judge(job: tuple[str, dict[str, Any]]) -> list[tuple[dict[str, Any], str | None]]:
    image_root, record = job
    path = os.path.join(image_root, record["image"])
    return [
        ({**record, "caption": caption}, _worker.reason(caption, path))
        for caption in annotations.captions_of(record)
    ]


def _progress_path(output: str) -> str:
    return output + ".progress.json"


def _load_progress(output: str) -> dict[str, Any]:
    try:
        with open(_progress_path(output)) as f:
            return json.load(f)
    except FileNotFoundError:
        return {"records": 0, "bytes": 0, "pairs": 0, "kept": 0, "removed": {}, "seconds": 0.0}


def _commit(output: str, progress: dict[str, Any]) -> None:
    tmp = _progress_path(output) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(progress, f)
    os.replace(tmp, _progress_path(output))


def run(
    input_path: str,
    image_root: str,
    output: str,
    *,
    thresholds: Thresholds = Thresholds(),
    spacy_model: str = "en_core_web_sm",
    workers: int = 1,
    chunk_records: int = 256,
    use_ocr: bool = True,
    max_records: int | None = None,
) -> dict[str, Any]:
    """Filters `input_path` into `output` (JSON lines); returns the summary it writes.

    Resumes from `output`'s progress file when one exists (same input and thresholds assumed).
    `max_records` stops early (as an interruption would), leaving the progress to resume from.
    """
    progress = _load_progress(output)
    done = progress["records"]
    records = itertools.islice(annotations.iter_records(input_path), done, max_records)
    jobs: Iterator[tuple[str, dict[str, Any]]] = ((image_root, rec) for _, rec in records)
    init = (spacy_model, thresholds, use_ocr, max(1, (os.cpu_count() or 1) // workers))
    pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, init)
    started = time.perf_counter()
    # Uncommitted bytes from an interrupted chunk are cut off, so every pair is written once.
    with open(output, "a+b") as out, pool:
        out.truncate(progress["bytes"])
        out.seek(progress["bytes"])
        while chunk := list(itertools.islice(jobs, chunk_records)):
            for pairs in pool.imap(_judge, chunk, chunksize=max(1, len(chunk) // (4 * workers))):
                for record, reason in pairs:
                    progress["pairs"] += 1
                    if reason is None:
                        out.write((json.dumps(record) + "\n").encode())
                        progress["kept"] += 1
                    else:
                        progress["removed"][reason] = progress["removed"].get(reason, 0) + 1
            out.flush()
            os.fsync(out.fileno())
            progress["records"] += len(chunk)
            progress["bytes"] = out.tell()
            progress["seconds"] = progress.get("seconds", 0.0) + time.perf_counter() - started
            started = time.perf_counter()
            _commit(output, progress)
    summary = {
        "input": os.path.abspath(input_path),
        "output": os.path.abspath(output),
        "thresholds": dataclasses.asdict(thresholds),
        "spacy_model": spacy_model,
        "ocr": "rapidocr-onnxruntime" if use_ocr else None,
        "records": progress["records"],
        "pairs": progress["pairs"],
        "kept": progress["kept"],
        "removed": {r: progress["removed"].get(r, 0) for r in REASONS},
        "workers": workers,
        "pairs_per_second": progress["pairs"] / max(progress["seconds"], 1e-9),
        "complete": max_records is None,
    }
    summary["pairs_per_second_per_worker"] = summary["pairs_per_second"] / workers
    with open(output + ".summary.json", "w") as f:
        json.dump(summary, f, indent=1)
    if max_records is None:
        os.remove(_progress_path(output))
    return summary


def main(argv) -> None:
    del argv
    f = flags.FLAGS
    summary = run(
        f.input,
        f.images,
        f.output,
        thresholds=Thresholds(f.min_complexity, f.require_action, f.max_text_overlap),
        spacy_model=f.spacy_model,
        workers=f.workers,
        use_ocr=f.ocr,
    )
    removed = ", ".join(f"{k} {v}" for k, v in summary["removed"].items())
    print(
        f"kept {summary['kept']} of {summary['pairs']} pairs ({removed}); "
        f"{summary['pairs_per_second']:.1f} pairs/s on {summary['workers']} worker(s)"
    )


if __name__ == "__main__":
    flags.DEFINE_string("input", None, "Annotation file: a JSON list or JSON lines.")
    flags.DEFINE_string("images", None, "Root that the records' `image` paths are relative to.")
    flags.DEFINE_string("output", None, "Kept pairs, as JSON lines.")
    flags.DEFINE_integer("min_complexity", 2, "Keep captions with C ≥ this.")
    flags.DEFINE_boolean("require_action", True, "Keep only captions with a verb.")
    flags.DEFINE_float("max_text_overlap", 0.2, "Drop a pair above this OCR/caption Jaccard.")
    flags.DEFINE_boolean("ocr", True, "Run the text-spotting criterion.")
    flags.DEFINE_string("spacy_model", "en_core_web_sm", "spaCy pipeline with a parser.")
    flags.DEFINE_integer("workers", os.cpu_count() or 1, "Processes.")
    flags.mark_flags_as_required(["input", "images", "output"])
    app.run(main)
