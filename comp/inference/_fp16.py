"""float16 graphs (``comp export --fp16``): onnxconverter-common's conversion with the precision-sensitive nodes,
and a regression head with everything after it, kept in float32."""

from __future__ import annotations

import re

import onnx

# nodes of a Predictor's output head, by the module path the exporter names them with: Predictor.head,
# FusedModel.folds.<k>.head (head_<n> for the n-th TTA view), the bundle's column reordering
# (inner.folds.<k>.head); a timm model's own head is model.head and never matches
HEAD_NODE = re.compile(r"^/(?:inner/)?(?:folds\.\d+/)?head(?:_\d+)?/[^/]+$")


# Nodes kept in float32 in an fp16 graph: reductions, exponentials and normalisations lose the most precision
# in half (softmax over logits, layer norms' mean/variance, the fused graph's geometric TTA merge).
FP32_OPS = (
    "Softmax",
    "LogSoftmax",
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "Pow",
    "Sqrt",
    "Exp",
    "Log",
    "LayerNormalization",
    "Erf",
)


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """float16 weights and activations with float32 inputs/outputs and the sensitive nodes in float32
    (onnxconverter-common's converter, the maintained one). A graph whose heads scale to a target's units keeps
    them and everything after them (TTA merge, fold mean) in float32: float16 has three significant digits and
    nothing above 65504, which values such as prices exceed."""
    from onnxconverter_common import float16

    tail = _value_tail(model)
    half = float16.convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=[*float16.DEFAULT_OP_BLOCK_LIST, *FP32_OPS],
        node_block_list=tail,
    )
    return _float32_outputs(_no_float16_between(half, set(tail)))


def _value_tail(model: onnx.ModelProto) -> list[str]:
    """Names of the output heads' nodes and of every node downstream of them, when a head scales its outputs
    (regression); empty for probability heads (softmax, sigmoid), which float16 keeps well enough."""
    nodes = list(model.graph.node)  # an exported graph lists its nodes in topological order
    heads = [n for n in nodes if HEAD_NODE.match(n.name)]
    if not any(n.op_type in ("Mul", "Add") for n in heads):
        return []
    tainted: set[str] = set()
    tail = []
    for n in nodes:
        if HEAD_NODE.match(n.name) or any(i in tainted for i in n.input):
            tainted.update(n.output)
            tail.append(n)
    # and the constants they read: the exporter shares equal initializers between folds through Identity nodes,
    # which must stay float32 for their float32 readers
    consts = {i.name for i in model.graph.initializer}
    read = {i for n in tail for i in n.input}
    feeders = [n for n in nodes if all(i in consts for i in n.input) and read.intersection(n.output)]
    return [n.name for n in feeders + tail if n.name]


def _no_float16_between(model: onnx.ModelProto, kept: set[str]) -> onnx.ModelProto:
    """The converter casts the outputs of float32 nodes it kept to float16 and back before the next kept node
    (where an output has several readers, as the TTA median's minimum and maximum); such a round trip turns
    values above 65504 into inf. Each of its casts after a ``kept`` node becomes a float32 one."""
    if not kept:
        return model
    producer = {o: n for n in model.graph.node for o in n.output}
    widened: set[str] = set()
    for n in model.graph.node:
        before = producer.get(n.input[0]) if n.op_type == "Cast" and n.input else None
        if before is None or before.name not in kept:
            continue
        for a in n.attribute:
            if a.name == "to" and a.i == onnx.TensorProto.FLOAT16:
                a.i = onnx.TensorProto.FLOAT
                widened.update(n.output)
    for info in [*model.graph.value_info, *model.graph.output]:
        if info.name in widened:
            info.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return model


def _float32_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """The converter can leave a graph output in float16 when its producer is in the block list; cast it back,
    so every graph, fp16 or not, returns float32 predictions."""
    for out in model.graph.output:
        if out.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16:
            continue
        inner = f"{out.name}_fp16"
        for node in model.graph.node:
            node.output[:] = [inner if o == out.name else o for o in node.output]
            node.input[:] = [inner if i == out.name else i for i in node.input]
        model.graph.node.append(onnx.helper.make_node("Cast", [inner], [out.name], to=onnx.TensorProto.FLOAT))
        out.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return model
