"""No function in ``training/`` takes more than MAX_PARAMETERS parameters: past that, related
options travel together as a settings object (``training.pruning.settings``,
``training.lab.settings``) instead of loose arguments."""
import ast
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parent.parent
MAX_PARAMETERS = 8


def parameter_count(node: ast.AST) -> int:
    """Parameters of a function definition, ``self``/``cls`` not counted, ``*args`` and
    ``**kwargs`` counted as one each."""
    args = node.args
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
    return len([n for n in names if n not in ("self", "cls")])


def too_many(folder: Path, limit: int = MAX_PARAMETERS) -> List[str]:
    """``file:line name (count)`` of every function under ``folder`` above ``limit``."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                count = parameter_count(node)
                if count > limit:
                    found.append("%s:%d %s (%d)" % (path.relative_to(folder), node.lineno,
                                                    getattr(node, "name", "lambda"), count))
    return found


def test_no_function_in_training_takes_more_than_eight_parameters():
    assert too_many(ROOT / "training") == []


def test_the_count_sees_what_it_should(tmp_path):
    (tmp_path / "m.py").write_text(
        "def ok(a, b, c, d, e, f, g, h): pass\n"
        "class C:\n"
        "    def method(self, a, b, c, d, e, f, g, h): pass\n"
        "    def wide(self, a, b, c, d, e, f, g, *, h, i): pass\n"
        "def star(a, b, c, d, e, f, g, *args, **kwargs): pass\n")
    assert [line.split(" ", 1)[1] for line in too_many(tmp_path)] == ["star (9)", "wide (9)"]
