"""The importers' dispatch tables come from the operators' own ``NAMES``
(:class:`dnnlens.ops.base.Names`): an importer says how it reads each operator class, never
which names an operator stands for. These tests fail when an importer's table names
something no registered operator claims, when an operator claims names in a format whose
importer cannot read that operator class, or when two operators claim one name."""

from __future__ import annotations

import pytest
from torch import nn

from dnnlens.importers import onnx as onnx_importer
from dnnlens.importers import spec as spec_importer
from dnnlens.importers import torch as torch_importer
from dnnlens.ops import REGISTRY, Activation, Binary, Norm, Op, Reduce
from dnnlens.ops.base import FORMATS, Names, names_in, register

#: format -> (the importer's readers by operator class, its dispatch table, names the
#: importer handles itself without an operator)
IMPORTERS = {
    "aten": (torch_importer._ATEN_READERS, torch_importer.ATEN_RULES, set()),
    "modules": (
        torch_importer._LEAF_READERS,
        {cls.__name__: rule for cls, rule in torch_importer.LEAF_RULES.items()},
        set(),
    ),
    "onnx": (onnx_importer._ONNX_READERS, onnx_importer.RULES, set(onnx_importer.STRUCTURAL)),
    "spec": (spec_importer._SPEC_READERS, spec_importer.BUILDERS, set()),
}


@pytest.mark.parametrize("source", FORMATS)
def test_an_importer_reads_exactly_the_operators_that_claim_its_names(source):
    readers, table, structural = IMPORTERS[source]
    claimed = names_in(source)
    registered = set(REGISTRY.values())
    assert set(readers) <= registered, "a reader for an operator class that is not registered"
    claimants = {cls for cls, _ in claimed.values()}
    assert claimants <= set(readers), sorted(c.__name__ for c in claimants - set(readers))
    assert set(readers) <= claimants, sorted(c.__name__ for c in set(readers) - claimants)
    # the dispatch table is the claimed names (plus the importer's own structure), no more
    assert set(table) == set(claimed) | structural, (
        sorted(set(table) - set(claimed) - structural),
        sorted(set(claimed) - set(table)),
    )
    assert not structural & set(claimed)


def test_module_names_are_torch_nn_classes():
    for name in names_in("modules"):
        assert isinstance(getattr(nn, name, None), type), name


def test_variants_are_what_the_operator_accepts():
    """Each variant builds the operator it names (a typo'd function would raise here)."""
    for source in FORMATS:
        for cls, variant in names_in(source).values():
            if cls in (Activation, Norm, Reduce):
                cls(function=variant)
            elif cls is Binary:
                function = variant if source != "aten" else variant[0]
                rounding = variant[1] if source == "aten" else None
                Binary(function=function, rounding_mode=rounding)


def test_a_name_claimed_by_two_operators_is_refused():
    @register
    class Shadow(Op):  # claims an aten name Conv already claims
        KIND = "shadow-test"
        NAMES = Names(aten={"convolution": None})

    try:
        with pytest.raises(TypeError, match="'convolution' claimed by Conv and Shadow"):
            names_in("aten")
    finally:
        del REGISTRY["shadow-test"]


def test_an_operator_the_importer_cannot_read_fails_the_check():
    """What the check above catches: a registered operator claiming an ONNX name with no
    reader in the ONNX importer."""

    @register
    class Orphan(Op):
        KIND = "orphan-test"
        NAMES = Names(onnx={"OrphanOp": None})

    try:
        with pytest.raises(AssertionError, match="Orphan"):
            test_an_importer_reads_exactly_the_operators_that_claim_its_names("onnx")
    finally:
        del REGISTRY["orphan-test"]
