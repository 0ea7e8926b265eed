"""The README and docs/ as a user meets them: their Python blocks run as written, the commands they give name
modules, scripts, make targets, flags and extras that exist, and every link and file they point to is there.

A block that cannot run here (it needs a process group, or compiles a whole training step) is preceded by
`<!-- not run here: REASON -->`, and REASON names the test that runs the same thing.
"""

import re
import shlex
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from conftest import DEVICE

import v0adam

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"(?:<!-- not run here: (?P<skip>.*?) -->\n)?```(?P<language>\w*)\n(?P<code>.*?)```", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
REPO_PATH = re.compile(r"^(?:bench|docs|examples|kernels|tests|v0adam|\.ci)/[\w./{},-]*$|^[\w-]+\.(?:md|cff|py)$")


def blocks(language):
    return list(_blocks(language))


def _blocks(language):
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            if match["language"] == language:
                line = text.count("\n", 0, match.start("code")) + 1
                yield pytest.param(match["code"], match["skip"], id=f"{page.relative_to(ROOT)}:{line}")


def reader_names(tmp_path):
    """The names the docs leave to the reader: a model (indexable, with a head and blocks), its loss, batches."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        OrderedDict(
            embed=torch.nn.Linear(8, 16),
            blocks=torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16)),
            head=torch.nn.Linear(16, 4),
        )
    ).to(DEVICE)
    batches = [(torch.randn(8, 8, device=DEVICE), torch.randint(0, 4, (8,), device=DEVICE)) for _ in range(3)]

    def loss_fn(model, batch):
        inputs, labels = batch
        logits = model(inputs.to(next(model.parameters()).dtype))
        return torch.nn.functional.cross_entropy(logits.float(), labels)

    return {
        "torch": torch,
        "v0adam": v0adam,
        "model": model,
        "loss_fn": loss_fn,
        "loader": batches,
        "train_loader": batches,
        "path": tmp_path / "part.pt",
        "my_v0": torch.full_like(model.head.weight, 1e-4),
    }


@pytest.mark.parametrize("code, skip", blocks("python"))
def test_python_block_runs(code, skip, tmp_path):
    if skip:
        named = re.findall(r"tests/\w+\.py", skip)
        assert named and all((ROOT / test).is_file() for test in named), f"the reason must name its test: {skip}"
        pytest.skip(skip)
    names = reader_names(tmp_path)
    before = [p.detach().clone() for p in names["model"].parameters()]
    exec(compile(code, "<docs>", "exec"), names)
    if "opt" in names and "step()" in code:
        after = list(names["model"].parameters())
        assert any(not torch.equal(b, a.detach().to(b.dtype)) for b, a in zip(before, after)), "no param moved"


def commands():
    """Every command line of a bash block or a code span, split into words."""
    for page in PAGES:
        text = page.read_text()
        bash = "\n".join(match["code"] for match in FENCE.finditer(text) if match["language"] == "bash")
        lines = bash.split("\n") + CODE_SPAN.findall(text)
        for line in lines:
            words = shlex.split(line.split("#")[0])
            if words and words[0] in ("python", "make", "bash", "pytest", "pip"):
                yield words


def assert_command_exists(words):
    program, args = words[0], words[1:]
    flags = [arg.split("=")[0] for arg in args if arg.startswith("--")]
    if program == "make":
        makefile = (ROOT / "Makefile").read_text()
        for arg in args:
            if "=" in arg:
                assert re.search(rf"^{arg.split('=')[0]} \?=", makefile, re.M), f"make has no variable {arg}"
            else:
                assert re.search(rf"^{re.escape(arg)}:", makefile, re.M), f"make has no target {arg}"
        return
    if program == "pip":
        extras = re.findall(r"\.\[([\w,]+)\]", " ".join(args))
        setup = (ROOT / "setup.py").read_text()
        for extra in ",".join(extras).split(","):
            assert not extra or f'"{extra}":' in setup, f"setup.py has no extra {extra}"
        return
    if program == "python" and args[:1] == ["-m"]:
        module = args[1]
        if module == "pytest":
            return
        source = ROOT / module.replace(".", "/")
        source = source / "__main__.py" if source.is_dir() else source.with_suffix(".py")
    elif program == "pytest":
        source = ROOT / args[0]
        flags = []  # pytest's own flags and plugins
    else:
        source = ROOT / args[0]
    assert source.exists(), f"{' '.join(words)}: no {source.relative_to(ROOT)}"
    for flag in flags:
        assert f"{flag}" in source.read_text(), f"{' '.join(words)}: {source.name} knows no {flag}"


def test_commands_name_what_exists():
    seen = 0
    for words in commands():
        assert_command_exists(words)
        seen += 1
    assert seen >= 15  # the docs give this many commands; a parser that found none would pass vacuously


def test_a_wrong_command_is_caught():
    for words in (
        ["make", "no-such-target"],
        ["python", "-m", "bench", "--no-such-flag"],
        ["pip", "install", ".[nope]"],
    ):
        with pytest.raises(AssertionError):
            assert_command_exists(words)


def heading_anchors(page):
    """GitHub's anchors: lower case, punctuation dropped except - and _, spaces to -."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_links_and_paths_resolve(page):
    text = page.read_text()
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://")):
            continue
        file, _, anchor = target.partition("#")
        linked = (page.parent / file).resolve() if file else page
        assert linked.exists(), f"{page.name}: link to a missing {target}"
        if anchor:
            assert anchor in heading_anchors(linked), f"{page.name}: no heading #{anchor} in {linked.name}"
    for span in CODE_SPAN.findall(text):
        if REPO_PATH.match(span):
            for path in expand_braces(span):
                # A bare file name in a table of tests is one of tests/.
                places = [ROOT / path] if "/" in path else [ROOT / path, ROOT / "tests" / path]
                assert any(place.exists() for place in places), f"{page.name} names a missing {path}"


def expand_braces(path):
    match = re.search(r"\{([^}]*)\}", path)
    if not match:
        return [path]
    before, after = path[: match.start()], path[match.end() :]
    return [expanded for choice in match[1].split(",") for expanded in expand_braces(before + choice + after)]
