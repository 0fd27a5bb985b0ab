"""The READMEs' commands are the CLI's: every `mhc-bench ...` line in a code block parses with
today's options, and every grid file it names exists and plans. A renamed flag fails here, not
in a reader's terminal."""

import re
import shlex
from pathlib import Path

import pytest

from harness.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
READMES = ["README.md", "slurm/README.md", "results/README.md"]


def commands(readme: str, root: Path = ROOT) -> list[list[str]]:
    """Each mhc-bench command of the file's code blocks, continuation lines joined, `&&` split."""
    text = (root / readme).read_text()
    found = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                argv = shlex.split(part, comments=True)
                if argv and argv[0] in ("mhc-bench", ".venv/bin/mhc-bench"):
                    found.append(argv[1:])
    return found


@pytest.mark.parametrize("readme", READMES)
def test_every_readme_command_parses_and_its_grid_files_exist(readme):
    argvs = commands(readme)
    assert argvs, f"{readme} shows no mhc-bench command"
    parser = build_parser()
    for argv in argvs:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{readme}: `mhc-bench {shlex.join(argv)}` is not a valid command")
        for arg in argv:
            if arg.endswith(".toml") and arg.startswith("slurm/grids/"):
                assert (ROOT / arg).is_file(), f"{readme}: {arg} does not exist"


def test_the_check_sees_a_stale_flag(tmp_path):
    (tmp_path / "README.md").write_text("```bash\n.venv/bin/mhc-bench grid submit g.toml --paralel 2\n```\n")
    [argv] = commands("README.md", root=tmp_path)
    assert argv == ["grid", "submit", "g.toml", "--paralel", "2"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
