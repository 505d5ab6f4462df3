"""docs/own_trainer.md runs as written: its Python blocks in order on their small
random problem; its L2 lines add exactly the trainer's term; its sampler
recipe draws the flat layout without a user's own items; and the error it
quotes is the one the operators raise."""
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("scipy.sparse", reason="the doc builds its CSR from scipy (implicit, in the test extra, brings it)")

from mrl_kernels.training import TrainConfig  # noqa: E402 - after the skip
from mrl_kernels.training.backbones import Batch  # noqa: E402
from mrl_kernels.training.methods import METHODS  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "own_trainer.md"
SECTION = "The operators in your own trainer"  # the part of the page whose snippets run in order


def blocks(language: str) -> list[str]:
    """The ``language`` blocks of the section (up to the next heading of its level or above)."""
    text = DOC.read_text()
    heading = re.search(rf"^(#+) {SECTION}$", text, flags=re.M)
    assert heading, f"{DOC} has no heading {SECTION!r}"
    end = re.search(rf"^#{{1,{len(heading.group(1))}}} ", text[heading.end():], flags=re.M)
    section = text[heading.end():heading.end() + end.start() if end else len(text)]
    return re.findall(rf"^```{language}\n(.*?)^```$", section, flags=re.S | re.M)


def test_every_python_block_runs_and_says_what_it_does():
    namespace = {}
    ran_l2 = False
    for code in blocks("python"):
        exec(compile(code, str(DOC), "exec"), namespace)
        if "l2 = " in code:  # the two lines add the trainer's L2 term
            ran_l2 = True
            ns = namespace
            objective = METHODS["mrl-m"].objective(TrainConfig(method="mrl-m", dims=ns["dims"], candidates=ns["M"],
                                                              layout="per-level", l2=ns["l2"]))
            batch = Batch(ns["u"], ns["p"], ns["item_emb"].weight, ns["u"], ns["p"], ns["item_emb"].weight)
            torch.testing.assert_close(ns["loss"], objective(batch, ns["cand"].view(-1, ns["L"], ns["M"])))
    assert ran_l2
    ns = namespace
    neg_items, users, train_csr = ns["neg_items"], ns["users"], ns["train_csr"]
    assert neg_items.shape == (len(users), ns["L"] * ns["M"])
    assert not train_csr.dense_rows(users).gather(1, neg_items).any(), "a user's own item among the candidates"
    assert ns["negatives"].shape == (len(users), ns["L"])
    for level in range(ns["L"]):  # each level's negative from its own columns
        pool = neg_items[:, level * ns["M"]:(level + 1) * ns["M"]]
        assert (pool == ns["negatives"][:, level, None]).any(1).all()


def test_the_quoted_error_is_the_one_raised():
    namespace = {}
    for code in blocks("python")[:3]:
        exec(compile(code, str(DOC), "exec"), namespace)
    quoted = next(b for b in blocks("") if b.startswith("ValueError: "))
    ns = namespace
    with pytest.raises(ValueError) as info:
        ns["mk"].mns_bpr_loss(ns["user_emb"](ns["users"]), ns["item_emb"](ns["pos_items"]), ns["item_emb"].weight,
                              ns["cand"], ns["dims"])
    assert " ".join(quoted.split()) == f"ValueError: {info.value}"
