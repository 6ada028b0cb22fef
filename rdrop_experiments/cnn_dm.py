"""CNN/DailyMail stories -> {train,val,test}.{source,target}, untokenized text.

The non-anonymized CNN/DailyMail of See et al. (2017) in the form BART and the
R-Drop paper fine-tune on, as the non-tokenizing ``make_datafiles.py`` that
fairseq's BART README points to writes it: one article per line in ``.source``
and its highlights joined by spaces in ``.target``, one line for every URL of
the official URL lists and in their order, text left untokenized (GPT-2 BPE
works on raw text). A story file is ``<sha1 of its URL>.story``. As in
``make_datafiles.py``, its lines are stripped and empty ones skipped; the lines
before the first line starting with ``@highlight`` are the article, and every
later line that does not start with ``@highlight`` is highlight text, so a
highlight that goes on over several lines keeps all of them. A line without
final punctuation gets " ." (space, period), the standard ``fix_missing_period``,
except the ``@highlight`` lines themselves. Stories without article text
keep their line, with an empty article, so that every split keeps its URL
count (test: 11,490); the count of such stories is printed per split.

    python examples/summarization/make_cnn_dm.py --stories cnn/stories dailymail/stories \\
        --url-lists url_lists --out cnn_dm
"""

import argparse
import hashlib
import io
from pathlib import Path

from rdrop_experiments.errors import BadInput

SPLITS = {"train": "all_train.txt", "val": "all_val.txt", "test": "all_test.txt"}
END_TOKENS = (".", "!", "?", "...", "'", "`", '"', "\u2019", "\u201d", ")")


def with_period(line):
    if not line or "@highlight" in line or line.endswith(END_TOKENS):
        return line
    return line + " ."


def parse_story(text):
    """(article, highlights) of one .story file's text, each joined by spaces."""
    article, highlights = [], []
    in_highlights = False
    # Lines as reading the file in text mode gives them (\n, \r\n or \r), not str.splitlines().
    for line in io.StringIO(text, newline=None):
        line = with_period(line.strip())
        if not line:
            continue
        if line.startswith("@highlight"):
            in_highlights = True
        elif in_highlights:
            highlights.append(line)
        else:
            article.append(line)
    return " ".join(article), " ".join(highlights)


def story_name(url):
    return hashlib.sha1(url.strip().encode("utf-8")).hexdigest() + ".story"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stories", nargs="+", type=Path, required=True,
                        help="folders of .story files (cnn/stories, dailymail/stories)")
    parser.add_argument("--url-lists", type=Path, required=True,
                        help="folder with all_train.txt, all_val.txt, all_test.txt")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    for folder in args.stories:
        if not folder.is_dir():
            raise BadInput(f"make_cnn_dm.py: error: story folder not found: {folder}")
    for name in SPLITS.values():
        if not (args.url_lists / name).is_file():
            raise BadInput(f"make_cnn_dm.py: error: URL list not found: {args.url_lists / name}")
    args.out.mkdir(parents=True, exist_ok=True)
    for split, list_name in SPLITS.items():
        urls = [u for u in (args.url_lists / list_name).read_text(encoding="utf-8").splitlines() if u.strip()]
        empty = 0
        with open(args.out / f"{split}.source", "w", encoding="utf-8") as src, \
                open(args.out / f"{split}.target", "w", encoding="utf-8") as tgt:
            for url in urls:
                paths = [folder / story_name(url) for folder in args.stories]
                path = next((p for p in paths if p.is_file()), None)
                if path is None:
                    raise BadInput(f"make_cnn_dm.py: error: no story for {url} ({story_name(url)}) in "
                                     + ", ".join(map(str, args.stories)))
                article, summary = parse_story(path.read_text(encoding="utf-8"))
                empty += not article or not summary
                src.write(article + "\n")
                tgt.write(summary + "\n")
        print(f"{split}: {len(urls)} stories, {empty} of them without article text or highlights (kept, empty)")

