"""Importers translate a network from somewhere else into the IR (:mod:`dnnlens.ir`), nothing
more: ``torch`` traces any ``nn.Module`` on the meta device. Import them by module
(``from dnnlens.importers.torch import import_torch``) so that ``import dnnlens`` stays light.
"""
