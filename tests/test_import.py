"""``import kdistill`` is lean: no CUDA, no data files, no network, no heavy optional modules."""

import json
import subprocess
import sys

PROBE = r"""
import json, os, sys
opened, sockets = [], []
def hook(event, args):
    if event == "open" and isinstance(args[0], str):
        path = args[0]
        if not path.endswith((".py", ".pyc", ".so", ".pth", ".json", ".txt", ".typed")) and "/__pycache__" not in path and not os.path.isdir(path):
            opened.append(path)
    elif event.startswith("socket."):
        sockets.append(event)
sys.addaudithook(hook)
import kdistill
from kdistill import DistillationLoss, Distiller, EnsembleTeacher, FrozenTeacher
import torch
heavy = [m for m in ("sklearn", "matplotlib", "tensorboard", "torch.utils.tensorboard", "optuna", "torchao", "onnx", "yaml") if m in sys.modules]
print(json.dumps({"cuda": torch.cuda.is_initialized(), "opened": opened, "sockets": sockets, "heavy": heavy}))
"""


def test_import_is_lean():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["cuda"] is False
    assert report["sockets"] == []
    assert report["heavy"] == []
    data_files = [
        p
        for p in report["opened"]
        if "kdistill" in p or p.endswith((".npz", ".gz", ".safetensors", ".yaml", ".pt"))
    ]
    assert data_files == [], data_files


def test_help_and_recipe_list_do_not_import_torch():
    probe = (
        "import sys, contextlib, io\n"
        "from kdistill.cli.main import main\n"
        "for argv in (['--help'], ['config', 'list'], ['methods']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit:\n"
        "            pass\n"
        "import kdistill\n"
        "kdistill.load_config\n"  # a torch-free export stays torch-free
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
