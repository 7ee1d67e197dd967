"""The graph contract: inputs input_ids / attention_mask [/ token_type_ids] -> sentence_embedding."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from encoderfile.errors import SpliceError
from encoderfile.runtime.manifest import TEXT_INPUTS as INPUTS
from encoderfile.runtime.manifest import TEXT_OUTPUT as OUTPUT

REQUIRED_INPUTS = INPUTS[:2]
TOKEN_STATE_NAMES = ("last_hidden_state", "token_embeddings")


def check_inputs(model: onnx.ModelProto, where: str) -> list[str]:
    names = [i.name for i in model.graph.input if i.name not in _initializers(model)]
    missing = [n for n in REQUIRED_INPUTS if n not in names]
    extra = [n for n in names if n not in INPUTS]
    if missing or extra:
        raise SpliceError(
            f"{where} has inputs {names}; encoderfile needs {list(REQUIRED_INPUTS)} "
            f"(plus optional token_type_ids){' and no others' if extra else ''}. "
            "Re-export the graph with those input names."
        )
    return names


def token_states(model: onnx.ModelProto, wanted: str | None, where: str) -> str:
    """The output holding [batch, sequence, hidden] token states: named, or unambiguous."""
    outputs = [o.name for o in model.graph.output]
    if wanted is not None:
        if wanted not in outputs:
            raise SpliceError(
                f"{where} has no output {wanted!r} (it has: {', '.join(outputs)}). "
                "Set model.output in the recipe to one of those."
            )
        return wanted
    known = [n for n in outputs if n in TOKEN_STATE_NAMES]
    if len(known) == 1:
        return known[0]
    candidates = [o.name for o in model.graph.output if _rank(o) in (3, None)]
    if len(outputs) == 1 and candidates:
        return outputs[0]
    listed = ", ".join(f"{o.name} {_shape(o)}" for o in model.graph.output)
    raise SpliceError(
        f"{where}: cannot tell which output holds the token states (outputs: {listed}). "
        "Set model.output in the recipe to the [batch, sequence, hidden] one."
    )


def hidden_size(model: onnx.ModelProto, states: str) -> int | None:
    out = next(o for o in model.graph.output if o.name == states)
    dims = out.type.tensor_type.shape.dim
    if len(dims) == 3 and dims[2].dim_value > 0:
        return dims[2].dim_value
    return None


def finish(model: onnx.ModelProto, x: str, dimension: int, output: str = OUTPUT) -> list[str]:
    """Make `x` the only output, named `output`; drop what no longer feeds it."""
    return finish_outputs(model, {output: (x, ["batch", dimension])})


def finish_outputs(
    model: onnx.ModelProto, outputs: dict[str, tuple[str, list[str | int]]]
) -> list[str]:
    """Make each tensor an output, {name: (tensor, float32 shape)}, in this order and no others;
    drop what no longer feeds them. Returns the graph's inputs."""
    graph = model.graph
    del graph.output[:]
    for name, (x, shape) in outputs.items():
        graph.node.append(helper.make_node("Identity", [x], [name], name=f"{name}/Identity"))
        graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    _prune(graph)
    return [i.name for i in graph.input]


LOGITS_NAME = "logits"


def logits(model: onnx.ModelProto, wanted: str | None, where: str) -> str:
    """A sequence-classification graph's [batch, labels] output: named, 'logits', or the only one."""
    outputs = [o.name for o in model.graph.output]
    if wanted is not None or LOGITS_NAME in outputs:
        return token_states(model, wanted or LOGITS_NAME, where)
    if len(outputs) == 1 and _rank(model.graph.output[0]) in (2, None):
        return outputs[0]
    listed = ", ".join(f"{o.name} {_shape(o)}" for o in model.graph.output)
    raise SpliceError(
        f"{where}: cannot tell which output holds the classification logits (outputs: {listed}). "
        "Set model.output in the recipe to the [batch, labels] one (export the model for "
        "sequence classification)."
    )


def _prune(graph: onnx.GraphProto) -> None:
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(out in needed for out in node.output):
            keep.append(node)
            needed.update(node.input)
            for attr in node.attribute:  # subgraphs (If/Loop) read outer names implicitly
                for sub in [attr.g, *attr.graphs]:
                    needed.update(n for sn in sub.node for n in sn.input)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    for field in (graph.initializer, graph.input, graph.value_info):
        kept = [v for v in field if v.name in needed]
        del field[:]
        field.extend(kept)


def _initializers(model: onnx.ModelProto) -> set[str]:
    return {i.name for i in model.graph.initializer}


def _rank(value: onnx.ValueInfoProto) -> int | None:
    t = value.type.tensor_type
    return len(t.shape.dim) if t.HasField("shape") else None


def _shape(value: onnx.ValueInfoProto) -> str:
    if _rank(value) is None:
        return "[?]"
    return (
        "["
        + ", ".join(d.dim_param or str(d.dim_value) for d in value.type.tensor_type.shape.dim)
        + "]"
    )
