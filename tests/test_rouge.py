"""rdrop_experiments.rouge (scripts/rouge.py) against ROUGE values worked out by hand on small examples.

Counting conventions (Lin 2004): ROUGE-N P = matched n-grams / hypothesis
n-grams, R = matched / reference n-grams (clipped counts), F1 = 2PR/(P+R);
ROUGE-L uses the longest common subsequence (LCS) length in place of the
match count; ROUGE-Lsum takes, for each reference sentence, the union of its
LCS with every hypothesis sentence.
"""

import json
import re
import subprocess
import sys

import pytest

from rdrop_experiments import rouge

from .helpers.fairseq_runs import REPO, write_lines

CAT_HYP = "the cat sat on the mat"
CAT_REF = "the cat was on the mat"


def f1(p, r):
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def test_unigram_bigram_and_lcs_counts_of_one_pair():
    # Unigrams: 5 of 6 match ("the" twice, cat, on, mat). Bigrams: "the cat",
    # "on the", "the mat": 3 of 5. LCS: "the cat on the mat", 5 of 6.
    result = rouge.score([CAT_HYP], [[CAT_REF]])
    assert result["rouge1"]["fmeasure"] == pytest.approx(100 * 5 / 6)
    assert result["rouge2"]["fmeasure"] == pytest.approx(100 * 3 / 5)
    assert result["rougeL"]["fmeasure"] == pytest.approx(100 * 5 / 6)


def test_precision_and_recall_differ_when_lengths_differ():
    # Hypothesis "the cat" (2 tokens), reference 6 tokens: 2 matches.
    result = rouge.score(["the cat"], [[CAT_REF]])
    assert result["rouge1"]["precision"] == pytest.approx(100.0)
    assert result["rouge1"]["recall"] == pytest.approx(100 * 2 / 6)
    assert result["rouge1"]["fmeasure"] == pytest.approx(100 * f1(1.0, 2 / 6))


def test_case_and_punctuation_are_normalised_away():
    result = rouge.score(["Hello, World!"], [["hello world"]])
    assert result["rouge2"]["fmeasure"] == pytest.approx(100.0)


def test_porter_stemming_is_on_by_default_and_can_be_switched_off():
    # cats -> cat, running -> run, runs -> run; "cat" (3 letters) is left alone.
    assert rouge.score(["cats running"], [["cat runs"]])["rouge1"]["fmeasure"] == pytest.approx(100.0)
    assert rouge.score(["cats running"], [["cat runs"]], stem=False)["rouge1"]["fmeasure"] == 0.0


def test_multi_reference_takes_the_best_reference_per_example_and_averages_examples():
    # Example 2 against "a b x y": 2 of 4 unigrams; against "a b c z": 3 of 4.
    # Bigrams: 1 of 3 ("a b") and 2 of 3 ("a b", "b c").
    result = rouge.score([CAT_HYP, "a b c d"], [[CAT_REF], ["a b x y", "a b c z"]])
    assert result["rouge1"]["fmeasure"] == pytest.approx(100 * (5 / 6 + 3 / 4) / 2)
    assert result["rouge2"]["fmeasure"] == pytest.approx(100 * (3 / 5 + 2 / 3) / 2)


def test_rouge_lsum_matches_sentences_where_rouge_l_sees_one_sequence():
    # Sentences in swapped order: the LCS of the whole token sequences is 3 of
    # 6, but each reference sentence is matched in full by one hypothesis
    # sentence, so the summary-level LCS is 6 of 6.
    result = rouge.score(["d e f\na b c"], [["a b c\nd e f"]])
    assert result["rougeL"]["fmeasure"] == pytest.approx(50.0)
    assert result["rougeLsum"]["fmeasure"] == pytest.approx(100.0)


def test_sentences_are_marked_by_separator_or_split_by_the_sentence_splitter():
    assert rouge.to_sentences("One. <n> Two") == "One.\nTwo"
    assert rouge.to_sentences("One. Two! Three? four") == "One. Two! Three? four"
    assert rouge.to_sentences("One. Two! Three? four", split_sentences=True) == "One.\nTwo!\nThree?\nfour"
    assert rouge.to_sentences("v1.5 is out. Yes", split_sentences=True) == "v1.5 is out.\nYes"
    assert rouge.to_sentences("Hello. <n> It is. Done.", split_sentences=True) == "Hello.\nIt is.\nDone."


def test_splitter_keeps_abbreviations_initials_and_numbers_inside_a_sentence():
    # A split after every ". " would cut each of these into pieces.
    text = ("Mr. Smith paid $3.50 in the U.S. on Monday. "
            "Dr. Jones, e.g. a doctor, met J. K. Rowling. It rained.")
    assert rouge.to_sentences(text, split_sentences=True).split("\n") == [
        "Mr. Smith paid $3.50 in the U.S. on Monday.",
        "Dr. Jones, e.g. a doctor, met J. K. Rowling.",
        "It rained."]


def test_rouge_lsum_of_split_summaries_is_the_summary_level_lcs():
    # Reference sentences "a b c ." and "d e f ."; hypothesis "d e f . a b c ."
    # in one line. Split: each reference sentence is matched whole, Lsum = 1.
    # Unsplit (one sentence each): Lsum falls back to the whole-summary LCS,
    # 3 of 6 tokens, the same as ROUGE-L.
    hyp, ref = "D e f. A b c.", "A b c. D e f."
    split = rouge.score([rouge.to_sentences(hyp, split_sentences=True)],
                        [[rouge.to_sentences(ref, split_sentences=True)]])
    whole = rouge.score([hyp], [[ref]])
    assert split["rougeLsum"]["fmeasure"] == pytest.approx(100.0)
    assert split["rougeL"]["fmeasure"] == whole["rougeL"]["fmeasure"] == pytest.approx(50.0)
    assert whole["rougeLsum"]["fmeasure"] == pytest.approx(50.0)


@pytest.mark.parametrize("hyps, refs, message", [
    (["a"], [["a"], ["b"]], "1 hypotheses but 2 reference lists"),
    (["a"], [[]], "example 1 has no reference"),
    ([], [], "no hypotheses"),
])
def test_bad_input_is_named(hyps, refs, message):
    with pytest.raises(ValueError, match=message):
        rouge.score(hyps, refs)


def _cli(*args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "rouge.py"), *map(str, args)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)


def test_command_line_scores_files_with_a_missing_reference_line_and_writes_json(tmp_path):
    write_lines(tmp_path / "hyp", [CAT_HYP, "a b c d"])
    write_lines(tmp_path / "ref1", [CAT_REF, "a b x y"])
    write_lines(tmp_path / "ref2", ["", "a b c z"])  # example 1 has one reference only
    proc = _cli(tmp_path / "hyp", tmp_path / "ref1", tmp_path / "ref2", "--json", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stdout
    expected_r1 = 100 * (5 / 6 + 3 / 4) / 2
    assert re.search(rf"^ROUGE-1 +\| {expected_r1:.2f} ", proc.stdout, re.M)
    assert "ROUGE-L (whole-summary LCS)" in proc.stdout
    assert "ROUGE-Lsum (per sentence; files2rouge's ROUGE-L)" in proc.stdout
    assert "2 examples, 1.50 references per example, stemming on" in proc.stdout
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["examples"] == 2 and saved["stemming"] is True
    assert saved["scores"]["rouge1"]["fmeasure"] == pytest.approx(expected_r1)
    assert set(saved["scores"]) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}


def test_command_line_names_misaligned_files(tmp_path):
    write_lines(tmp_path / "hyp", ["a", "b"])
    write_lines(tmp_path / "ref", ["a"])
    proc = _cli(tmp_path / "hyp", tmp_path / "ref")
    assert proc.returncode != 0
    assert "has 1 lines but" in proc.stdout and "line-aligned" in proc.stdout


def test_command_line_names_an_example_without_any_reference(tmp_path):
    write_lines(tmp_path / "hyp", ["a", "b"])
    write_lines(tmp_path / "ref", ["a", ""])
    proc = _cli(tmp_path / "hyp", tmp_path / "ref")
    assert proc.returncode != 0 and "example 2" in proc.stdout and "at least one reference" in proc.stdout


def test_command_line_names_a_missing_file(tmp_path):
    proc = _cli(tmp_path / "nope", tmp_path / "ref")
    assert proc.returncode != 0 and "file not found" in proc.stdout
