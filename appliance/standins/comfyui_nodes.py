"""The stand-in's node library and prompt validation, shaped like ComfyUI's.

Nodes are tiny but real: EmptyImage/ImageInvert/SaveImage produce genuine PNGs, SaveAnimatedGIF a GIF under
`gifs` (as VHS_VideoCombine does), SaveAudio a WAV under `audio`. CheckpointLoaderSimple/LoraLoader validate
their model names against lists, so a missing model fails validation with `value_not_in_list` as in ComfyUI.
Error dicts follow ComfyUI's execution.validate_prompt (type/message/details/extra_info).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Input spec: (type or combo list, options). Mirrors the shape /object_info serves.
InputSpec = tuple[Any, dict[str, Any]]


@dataclass
class NodeDef:
    name: str
    required: dict[str, InputSpec]
    outputs: list[str]
    output_node: bool = False
    category: str = "standin"
    #: Progress steps this node reports (0 = none); stands in for a sampler's step loop.
    steps_input: str | None = None
    optional: dict[str, InputSpec] = field(default_factory=dict)


DEFAULT_CHECKPOINTS = ["sd_xl_base_1.0.safetensors", "v1-5-pruned-emaonly.safetensors"]
DEFAULT_LORAS = ["detail.safetensors"]
DEFAULT_VAES = ["vae-ft-mse.safetensors"]

INT = "INT"


def node_library(
    checkpoints: list[str], loras: list[str], vaes: list[str], input_files: list[str] | None = None
) -> dict[str, NodeDef]:
    img: InputSpec = ("IMAGE", {})
    prefix = ("STRING", {"default": "ComfyUI"})
    defs = [
        NodeDef(
            "EmptyImage",
            {
                "width": (INT, {"default": 512, "min": 1, "max": 4096}),
                "height": (INT, {"default": 512, "min": 1, "max": 4096}),
                "batch_size": (INT, {"default": 1, "min": 1, "max": 16}),
                "color": (INT, {"default": 0, "min": 0, "max": 0xFFFFFF}),
            },
            ["IMAGE"],
        ),
        NodeDef("ImageInvert", {"image": img}, ["IMAGE"]),
        NodeDef(
            "LoadImage", {"image": (sorted(input_files or []), {"image_upload": True})}, ["IMAGE", "MASK"]
        ),
        NodeDef(
            "StandinSampler",
            {"image": img, "steps": (INT, {"default": 4, "min": 1, "max": 1_000_000})},
            ["IMAGE"],
            steps_input="steps",
        ),
        NodeDef("SaveImage", {"images": img, "filename_prefix": prefix}, [], output_node=True),
        NodeDef("PreviewImage", {"images": img}, [], output_node=True),
        NodeDef(
            "SaveAnimatedGIF",
            {
                "images": img,
                "filename_prefix": prefix,
                "fps": ("FLOAT", {"default": 8.0, "min": 0.1, "max": 60.0}),
            },
            [],
            output_node=True,
        ),
        NodeDef(
            "SaveAudio",
            {"seconds": ("FLOAT", {"default": 0.25, "min": 0.01, "max": 10.0}), "filename_prefix": prefix},
            [],
            output_node=True,
        ),
        # A custom-node-style output node that saves a .json file: /view serves it as application/json.
        NodeDef(
            "StandinSaveJSON",
            {"text": ("STRING", {"default": "{}"}), "filename_prefix": prefix},
            [],
            output_node=True,
        ),
        NodeDef("CheckpointLoaderSimple", {"ckpt_name": (list(checkpoints), {})}, ["MODEL", "CLIP", "VAE"]),
        NodeDef(
            "LoraLoader",
            {"model": ("MODEL", {}), "clip": ("CLIP", {}), "lora_name": (list(loras), {})},
            ["MODEL", "CLIP"],
        ),
        NodeDef("VAELoader", {"vae_name": (list(vaes), {})}, ["VAE"]),
    ]
    return {d.name: d for d in defs}


def object_info(defs: dict[str, NodeDef]) -> dict[str, Any]:
    """Node schemas as GET /object_info serves them (combo inputs are `[[choices], {opts}]`)."""
    out: dict[str, Any] = {}
    for d in defs.values():
        out[d.name] = {
            "input": {"required": {k: [v[0], v[1]] for k, v in d.required.items()}},
            "input_order": {"required": list(d.required)},
            "output": d.outputs,
            "output_is_list": [False] * len(d.outputs),
            "output_name": d.outputs,
            "name": d.name,
            "display_name": d.name,
            "description": "",
            "python_module": "nodes",
            "category": d.category,
            "output_node": d.output_node,
        }
    return out


def _error(kind: str, message: str, details: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra or {}}


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
    )


def _check_value(name: str, kind: Any, opts: dict[str, Any], value: Any) -> dict[str, Any] | None:
    """The reason a literal input value is refused (combo list, number type and range), or None."""
    if isinstance(kind, list):
        if value not in kind:
            return _error(
                "value_not_in_list",
                "Value not in list",
                f"{name}: '{value}' not in {kind}",
                {"input_name": name, "input_config": [kind, opts], "received_value": value},
            )
    elif kind in (INT, "FLOAT"):
        if not isinstance(value, int | float) or isinstance(value, bool):
            return _error(
                "invalid_input_type",
                f"Failed to convert an input value to a {kind} value",
                f"{name}, {value}",
                {"input_name": name, "received_value": value},
            )
        elif "min" in opts and value < opts["min"]:
            return _error(
                "value_smaller_than_min",
                f"Value {value} smaller than min of {opts['min']}",
                f"{name}",
                {"input_name": name, "received_value": value},
            )
        elif "max" in opts and value > opts["max"]:
            return _error(
                "value_bigger_than_max",
                f"Value {value} bigger than max of {opts['max']}",
                f"{name}",
                {"input_name": name, "received_value": value},
            )
    return None


def _validate_node(
    prompt: dict[str, Any], node_id: str, defs: dict[str, NodeDef], seen: dict[str, list[dict[str, Any]]]
) -> bool:
    """Validate a node and its inputs recursively; records reasons per node in `seen`. True when valid."""
    if node_id in seen:
        return not seen[node_id]
    seen[node_id] = []
    node = prompt[node_id]
    d = defs[node["class_type"]]
    inputs = node.get("inputs") or {}
    reasons: list[dict[str, Any]] = []
    upstream_ok = True
    for name, (kind, opts) in d.required.items():
        if name not in inputs:
            if "default" in opts:
                continue
            reasons.append(
                _error("required_input_missing", "Required input is missing", name, {"input_name": name})
            )
            continue
        value = inputs[name]
        if _is_link(value):
            src = value[0]
            if src not in prompt:
                reasons.append(
                    _error(
                        "bad_linked_input",
                        "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                        f"{name}",
                        {"input_name": name},
                    )
                )
                continue
            upstream_ok = _validate_node(prompt, src, defs, seen) and upstream_ok
            continue
        problem = _check_value(name, kind, opts, value)
        if problem is not None:
            reasons.append(problem)
    seen[node_id] = reasons
    return not reasons and upstream_ok


def _output_nodes(
    prompt: dict[str, Any], defs: dict[str, NodeDef]
) -> tuple[list[str], dict[str, Any] | None]:
    """The prompt's output nodes, or the error of its first node without a known class_type."""
    outputs: list[str] = []
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            return [], _error(
                "invalid_prompt",
                "Cannot execute because a node is missing the class_type property.",
                f"Node ID '#{node_id}'",
            )
        d = defs.get(node["class_type"])
        if d is None:
            return [], _error(
                "invalid_prompt",
                f"Cannot execute because node {node['class_type']} does not exist.",
                f"Node ID '#{node_id}'",
            )
        if d.output_node:
            outputs.append(node_id)
    return outputs, None


def validate_prompt(
    prompt: Any, defs: dict[str, NodeDef]
) -> tuple[bool, dict[str, Any] | None, list[str], dict[str, Any]]:
    """(valid, error, outputs_to_execute, node_errors), like ComfyUI's execution.validate_prompt."""
    if not isinstance(prompt, dict):
        return False, _error("invalid_prompt", "Invalid prompt", "prompt must be an object", {}), [], {}
    outputs, error = _output_nodes(prompt, defs)
    if error is not None:
        return False, error, [], {}
    if not outputs:
        return False, _error("prompt_no_outputs", "Prompt has no outputs", ""), [], {}
    good: list[str] = []
    node_errors: dict[str, Any] = {}
    messages: list[str] = []
    for out in outputs:
        seen: dict[str, list[dict[str, Any]]] = {}
        if _validate_node(prompt, out, defs, seen):
            good.append(out)
            continue
        for node_id, reasons in seen.items():
            if not reasons:
                continue
            entry = node_errors.setdefault(
                node_id,
                {"errors": reasons, "dependent_outputs": [], "class_type": prompt[node_id]["class_type"]},
            )
            entry["dependent_outputs"].append(out)
            messages += [f"{r['message']}: {r['details']}" for r in reasons]
    if not good:
        return (
            False,
            _error(
                "prompt_outputs_failed_validation", "Prompt outputs failed validation", "\n".join(messages)
            ),
            [],
            node_errors,
        )
    return True, None, good, node_errors


def execution_order(prompt: dict[str, Any], outputs: list[str]) -> list[str]:
    """Nodes needed for `outputs`, dependencies first."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(node_id: str) -> None:
        if node_id in order or node_id in visiting:
            return
        visiting.add(node_id)
        for value in (prompt[node_id].get("inputs") or {}).values():
            if _is_link(value) and value[0] in prompt:
                visit(value[0])
        order.append(node_id)

    for out in sorted(outputs, key=str):
        visit(out)
    return order
