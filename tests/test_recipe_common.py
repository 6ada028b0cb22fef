"""examples/common.sh, the recipes' shared shell library, sourced by a script of its own."""

import subprocess

from .helpers.fairseq_runs import REPO

LIBRARY = REPO / "examples" / "common.sh"


def _recipe(tmp_path, body):
    """Runs ``body`` in a script in ``tmp_path`` that begins as a recipe does."""
    script = tmp_path / "recipe.sh"
    script.write_text(f'set -euo pipefail\nsource "{LIBRARY}"\n{body}\n')
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30)


def test_sourcing_sets_the_recipe_folder_and_the_repository(tmp_path):
    assert _recipe(tmp_path, 'echo "$here $root"').stdout == f"{tmp_path} {REPO}\n"


def test_defaults_set_only_unset_or_empty_variables(tmp_path):
    r = _recipe(tmp_path, 'A=1 B="" setting=kept; defaults A=2 B=3 C="4 5" D= setting=lost name=new\n'
                          'echo "$A|$B|$C|$D|$setting|$name"')
    assert r.stdout == "1|3|4 5||kept|new\n", r.stderr


def test_a_redirection_that_cannot_be_opened_fails_the_command_unrun_where_the_caller_tests_it(tmp_path):
    """``run_command ... || ...`` suspends set -e, also in run_command's subshell: a file that cannot be
    opened must still fail the command, named in an error, and the command must not run."""
    missing = tmp_path / "missing"
    r = _recipe(tmp_path, f'run_command ">{missing}/out" echo ran || echo caught\n'
                          f'run_command "<{missing}/in" echo ran || echo caught')
    assert r.returncode == 0 and r.stdout == "caught\ncaught\n", r.stdout
    assert f"recipe.sh: error: cannot write {missing}/out\n" in r.stderr
    assert f"recipe.sh: error: cannot read {missing}/in\n" in r.stderr
    assert "echo ran" not in r.stderr, "the command ran (set -x traced it)"
