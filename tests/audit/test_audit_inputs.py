"""Bad input to `llmlab audit`: one clear line on stderr, exit code 2, nothing compiled."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmlab.cli import main

MODEL = "import torch\nmodel = torch.nn.Linear(4, 4)\n"


def audit_error(capsys: pytest.CaptureFixture, path: Path | str) -> str:
    assert main(["audit", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("llmlab: error: ")
    return err


def write(tmp_path: Path, text: str, name: str = "user_model.py") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_factory_that_raises(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write(tmp_path, MODEL + "def build():\n    raise RuntimeError('no weights here')\n")
    err = audit_error(capsys, path)
    assert f"{path}:4" in err and "build() raised RuntimeError: no weights here" in err


def test_missing_factory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write(tmp_path, MODEL + "def make():\n    return model, torch.zeros(2, 4)\n")
    err = audit_error(capsys, path)
    assert "no function 'build'" in err and "make" in err
    assert "no function 'other'" in audit_error(capsys, f"{path}:other")


@pytest.mark.parametrize("returned, expected", [
    ("model", "got Linear"),
    ("(model,)", "got a tuple of 1"),
    ("(model, torch.zeros(2, 4), None, 1)", "got a tuple of 4"),
    ("(torch.zeros(2), torch.zeros(2, 4))", "model must be a torch.nn.Module"),
    ("(model, [1, 2])", "idx must be a tensor"),
    ("(model, torch.zeros(2, 4), 3)", "decode_step must be callable"),
])
def test_factory_returning_the_wrong_shape(tmp_path: Path, capsys: pytest.CaptureFixture,
                                          returned: str, expected: str) -> None:
    path = write(tmp_path, MODEL + f"def build():\n    return {returned}\n")
    assert expected in audit_error(capsys, path)


def test_errors_in_the_users_file_and_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "no such file" in audit_error(capsys, tmp_path / "absent.py")
    broken = write(tmp_path, "def build(:\n", "broken.py")
    assert "SyntaxError" in audit_error(capsys, broken) and "broken.py:1" in audit_error(capsys, broken)
    raises_on_import = write(tmp_path, "import torch\nx = 1 / 0\n", "boom.py")
    assert "boom.py:2: importing it raised ZeroDivisionError" in audit_error(capsys, raises_on_import)
    bad_forward = write(tmp_path, MODEL + "def build():\n    return model, torch.zeros(2, 3)\n", "shape.py")
    assert "model(idx) raised RuntimeError" in audit_error(capsys, bad_forward)


def test_sibling_modules_import(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The file is imported from its own folder: a helper next to it imports."""
    write(tmp_path, "import torch\nclass Net(torch.nn.Linear):\n    pass\n", "helper_mod.py")
    path = write(tmp_path, "import torch\nfrom helper_mod import Net\ndef build():\n"
                 "    return Net(4, 4), torch.zeros(2, 3)\n")
    assert "model(idx) raised RuntimeError" in audit_error(capsys, path)  # imported, then ran
