"""examples/mnist's hand-written SGD step is torch.optim.SGD's arithmetic, bit for bit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from teeflow.fl.package import build_package, load_entrypoint, unpack_package

torch = pytest.importorskip("torch")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mnist"


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Any:
    archive, digest = build_package(EXAMPLE)
    dest = tmp_path_factory.mktemp("pkg") / "mnist"
    unpack_package(archive, dest, digest)
    train = load_entrypoint(dest, "train")
    return sys.modules[train.__module__]


def _models(task: Any, name: str) -> tuple[Any, Any]:
    models = sys.modules[task.__name__.rsplit(".", 1)[0] + ".models"]
    shape = (28, 28) if name == "cnn" else (64,)
    torch.manual_seed(3)
    a = models.build_model(name, shape, 10)
    b = models.build_model(name, shape, 10)
    b.load_state_dict(a.state_dict())
    return a, b


def _run(model: Any, step: Any, data: list[tuple[Any, Any]]) -> None:
    loss_fn = torch.nn.CrossEntropyLoss()
    for x, y in data:
        loss = loss_fn(model(x), y)
        loss.backward()
        step()


@pytest.mark.parametrize(
    ("name", "lr", "momentum"), [("mlp", 0.01, 0.0), ("mlp", 0.05, 0.9), ("cnn", 0.01, 0.0)]
)
def test_sgd_step_equals_torch_optim_sgd(task: Any, name: str, lr: float, momentum: float) -> None:
    ours, ref = _models(task, name)
    gen = torch.Generator().manual_seed(11)
    shape = (32, 28, 28) if name == "cnn" else (32, 8, 8)
    data = [
        (torch.randn(shape, generator=gen), torch.randint(0, 10, (32,), generator=gen))
        for _ in range(4 if name == "cnn" else 12)
    ]
    params = list(ours.parameters())
    buffers: list[Any] = [None] * len(params)
    _run(ours, lambda: task.sgd_step(params, lr, momentum, buffers), data)
    opt = torch.optim.SGD(ref.parameters(), lr=lr, momentum=momentum)

    def ref_step() -> None:
        opt.step()
        opt.zero_grad()

    _run(ref, ref_step, data)
    for (k, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert all(p.grad is None for p in params)
    # the step did change the model
    fresh, _ = _models(task, name)
    assert not torch.equal(fresh.state_dict()[k], ours.state_dict()[k])


def test_sgd_step_skips_parameters_without_gradient(task: Any) -> None:
    p = torch.nn.Parameter(torch.ones(3))
    before = p.detach().clone()
    task.sgd_step([p], 0.1)
    assert torch.equal(p.detach(), before)


def test_train_does_not_import_dynamo(tmp_path: Path) -> None:
    """A fresh process that runs init + train of the package never loads torch._dynamo."""
    code = f"""
import subprocess
import sys
from pathlib import Path
from teeflow.fl.package import build_package, load_entrypoint, unpack_package
archive, digest = build_package(Path({str(EXAMPLE)!r}))
dest = Path({str(tmp_path)!r}) / "pkg"
unpack_package(archive, dest, digest)
init, train = load_entrypoint(dest, "init"), load_entrypoint(dest, "train")
spec = "digits?clients=3&index=0&seed=7"
_, n, metrics = train(init({{"data": spec}}), {{"data": spec, "threads": 1}})
print(n > 0, "torch" in sys.modules, "torch._dynamo" in sys.modules)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.split() == ["True", "True", "False"]
