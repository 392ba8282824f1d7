"""The IR: Graph (networkx-backed), Node, tensor types, constants and verify()."""

from vidcc.ir.graph import IMPLICIT, Graph, Node
from vidcc.ir.tensor import Constant, Dim, TensorType
from vidcc.ir.verify import problems, verify

__all__ = ["IMPLICIT", "Constant", "Dim", "Graph", "Node", "TensorType", "problems", "verify"]
