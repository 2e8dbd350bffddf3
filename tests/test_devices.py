"""One device choice (`--device`, CAPTIONER_DEVICE) for every command, refused in one line where it does not exist."""
import pytest
import torch

from captioner.devices import one_cpu_thread, resolve_device
from captioner.errors import CaptionerError
from conftest import EXAMPLES
from helpers import one_line_error

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of a CUDA device where none exists")


def test_auto_and_cpu(monkeypatch):
    monkeypatch.delenv("CAPTIONER_DEVICE", raising=False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_environment_variable_is_the_default(monkeypatch):
    monkeypatch.setenv("CAPTIONER_DEVICE", "cpu")
    assert resolve_device(None) == torch.device("cpu")
    monkeypatch.setenv("CAPTIONER_DEVICE", "tpu")
    with pytest.raises(CaptionerError, match="choose auto, cpu, cuda or cuda:N"):
        resolve_device(None)


@NO_CUDA
@pytest.mark.parametrize("choice", ["cuda", "cuda:1"])
def test_missing_cuda_is_one_line_saying_what_to_do(choice):
    with pytest.raises(CaptionerError, match="use --device cpu"):
        resolve_device(choice)


@NO_CUDA
@pytest.mark.parametrize("command", [
    ["caption", str(EXAMPLES / "chelsea.jpg")],
    ["evaluate", "--dataset", str(EXAMPLES)],
    ["serve", "--port", "5999"],
])
def test_every_command_refuses_a_missing_gpu_in_one_line(capsys, command):
    error = one_line_error(capsys, [*command, "--device", "cuda"])
    assert "'cuda'" in error and "--device cpu" in error


@NO_CUDA
def test_train_refuses_a_missing_gpu_before_writing(capsys, tmp_path):
    output, pairs = tmp_path / "run", tmp_path / "pairs.jsonl"
    pairs.write_text('{"image": "a.jpg", "caption": "a cat", "split": "train"}\n{"image": "b.jpg", "caption": "a dog", "split": "dev"}\n')
    error = one_line_error(capsys, ["train", "--dataset", str(pairs), "--output", str(output), "--cache", str(tmp_path / "cache"), "--device", "cuda:0"])
    assert "--device cpu" in error
    assert not output.exists()


def test_a_misspelt_device_is_a_usage_error(capsys):
    error = one_line_error(capsys, ["caption", str(EXAMPLES / "chelsea.jpg"), "--device", "gpu"])
    assert "must be auto, cpu, cuda or cuda:N" in error


def test_caption_on_the_cpu_by_name(capsys):
    from captioner.cli.commands import main

    assert main(["caption", str(EXAMPLES / "chelsea.jpg"), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.count("\t") == 1


def test_decoding_runs_on_one_cpu_thread_and_restores_the_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_cpu_thread(torch.device("cpu")):
            assert torch.get_num_threads() == 1
            with one_cpu_thread(torch.device("cpu")):  # nested blocks keep one thread...
                assert torch.get_num_threads() == 1
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2  # ...and the outermost restores the count set before it
        with one_cpu_thread(torch.device("cuda")):  # another device: the CPU count is left alone
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
