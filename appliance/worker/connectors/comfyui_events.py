"""Pure helpers for the ComfyUI connector: progress mapping, error explanations, outputs, payload and models.

Progress mapping: each node that will run (all nodes of the graph minus those ComfyUI reports in
`execution_cached`) counts as one equal unit. A node counts as done once a later node starts `executing`, or
its `progress_state` says finished; the running node adds `value/max` of its latest `progress` (or
`progress_state`). percent = 100 * (done + fraction) / total, never decreasing, capped at 99 until the
prompt has succeeded (only then 100): `execution_success` says so. `executing {node: null}` does not: ComfyUI
sends it after every prompt, interrupted and failed ones too; it only ends the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from appliance.worker.connectors.base import PermanentError, RetryableError

#: Exception types/messages that mean "the GPU ran out of memory": retrying (after ComfyUI unloads
#: models, possibly on another worker) can succeed, so these are retryable; every other node error is permanent.
OOM_MARKERS = ("OutOfMemoryError", "out of memory", "Allocation on device", "OOM")


@dataclass
class ProgressTracker:
    prompt_id: str
    nodes: set[str]
    cached: set[str] = field(default_factory=set)
    done: set[str] = field(default_factory=set)
    current: str | None = None
    fraction: float = 0.0
    percent: float = 0.0
    #: The prompt succeeded (`execution_success`): only then is it 100 %.
    finished: bool = False
    #: The prompt ended, however it went (`executing {node: null}`, error, interruption).
    ended: bool = False

    def _total(self) -> int:
        return max(1, len(self.nodes - self.cached))

    def handle(self, event: str, data: dict[str, Any]) -> bool:
        """Fold one WS event in; True when the percent or current node changed."""
        if data.get("prompt_id") not in (None, self.prompt_id):
            return False
        before = (self.percent, self.current)
        if event == "execution_cached":
            self.cached |= {str(n) for n in data.get("nodes", [])}
        elif event == "executing":
            node = data.get("node")
            if node is None:
                if data.get("prompt_id") == self.prompt_id:
                    self.ended = True
            else:
                if self.current is not None and self.current != str(node):
                    self.done.add(self.current)
                self.current, self.fraction = str(node), 0.0
        elif event == "progress":
            if str(data.get("node", self.current)) == self.current and data.get("max"):
                self.fraction = min(1.0, float(data["value"]) / float(data["max"]))
        elif event == "progress_state":
            for node_id, st in (data.get("nodes") or {}).items():
                if st.get("state") == "finished":
                    self.done.add(str(node_id))
                elif str(node_id) == self.current and st.get("max"):
                    self.fraction = min(1.0, float(st["value"]) / float(st["max"]))
        elif event == "execution_success":
            self.finished = self.ended = True
        elif event in ("execution_error", "execution_interrupted"):
            self.ended = True
        done = len((self.done - self.cached) & self.nodes)
        fraction = self.fraction if self.current not in self.done else 0.0
        value = 100.0 * (done + fraction) / self._total()
        self.percent = max(self.percent, 100.0 if self.finished else min(99.0, value))
        return (self.percent, self.current) != before


def explain_validation(body: dict[str, Any]) -> PermanentError:
    """Turn a 400 from POST /prompt into one readable PermanentError (node errors and the valid choices)."""
    error = body.get("error") or {}
    if isinstance(error, str):
        error = {"message": error}
    parts = [f"{error.get('type', 'invalid_prompt')}: {error.get('message', 'rejected')}"]
    if error.get("details") and not body.get("node_errors"):
        parts.append(str(error["details"]))
    for node_id, info in (body.get("node_errors") or {}).items():
        for reason in info.get("errors", []):
            line = f"node {node_id} ({info.get('class_type', '?')}): {reason.get('type')}: {reason.get('details')}"
            extra = reason.get("extra_info") or {}
            config = extra.get("input_config")
            if (
                reason.get("type") == "value_not_in_list"
                and isinstance(config, list)
                and config
                and isinstance(config[0], list)
            ):
                line += f" (available: {', '.join(map(str, config[0]))})"
            parts.append(line)
    code = "model_not_found" if "value_not_in_list" in str(body.get("node_errors")) else "invalid_workflow"
    return PermanentError(
        "ComfyUI rejected the workflow: " + "; ".join(parts),
        code=code,
        details={"error": error, "node_errors": body.get("node_errors") or {}},
    )


def execution_failure(data: dict[str, Any]) -> PermanentError | RetryableError:
    """Map an execution_error message; OOM-like errors are retryable (see OOM_MARKERS)."""
    exc_type = str(data.get("exception_type", ""))
    message = str(data.get("exception_message", "")).strip()
    details = {k: data.get(k) for k in ("node_id", "node_type", "exception_type", "exception_message")}
    details["traceback"] = "".join(data.get("traceback") or [])[-2000:]
    text = f"ComfyUI node {data.get('node_id')} ({data.get('node_type')}) failed: {exc_type}: {message}"
    if any(marker in exc_type or marker in message for marker in OOM_MARKERS):
        return RetryableError(text, code="oom", details=details)
    return PermanentError(text, code="execution_error", details=details)


def status_message(entry: dict[str, Any], event: str) -> dict[str, Any] | None:
    """The data of the first `event` in a history entry's status.messages."""
    for item in (entry.get("status") or {}).get("messages") or []:
        if isinstance(item, list | tuple) and len(item) == 2 and item[0] == event:
            return dict(item[1])
    return None


@dataclass
class OutputRef:
    node: str
    kind: str
    filename: str
    subfolder: str
    type: str


def output_refs(entry: dict[str, Any]) -> tuple[list[OutputRef], dict[str, Any]]:
    """Every file in every output list (images, gifs, videos, audio, ...), skipping temp previews;
    plus the non-file ui values (text, flags) keyed by node."""
    files: list[OutputRef] = []
    other: dict[str, Any] = {}
    for node, ui in (entry.get("outputs") or {}).items():
        if not isinstance(ui, dict):
            continue
        for kind, items in ui.items():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, dict) and "filename" in item:
                    if item.get("type", "output") != "temp":
                        files.append(
                            OutputRef(
                                str(node),
                                kind,
                                str(item["filename"]),
                                str(item.get("subfolder") or ""),
                                str(item.get("type") or "output"),
                            )
                        )
                else:
                    other.setdefault(str(node), {}).setdefault(kind, []).append(item)
    return files, other


#: Loader nodes whose combo lists name the models this instance has.
MODEL_INPUTS = {
    "CheckpointLoaderSimple": ("ckpt_name", "checkpoints"),
    "LoraLoader": ("lora_name", "loras"),
    "VAELoader": ("vae_name", "vae"),
    "UNETLoader": ("unet_name", "diffusion_models"),
    "CLIPLoader": ("clip_name", "text_encoders"),
    "ControlNetLoader": ("control_net_name", "controlnet"),
    "UpscaleModelLoader": ("model_name", "upscale_models"),
}


def model_folders(object_info: Any) -> dict[str, list[str]]:
    """Model folder -> the files its loader node offers, from /object_info."""
    folders: dict[str, list[str]] = {}
    for node, (field_name, folder) in MODEL_INPUTS.items():
        spec = ((object_info or {}).get(node) or {}).get("input", {}).get("required", {}).get(field_name)
        choices = combo_choices(spec)
        if choices is not None:
            folders[folder] = choices
    return folders


def combo_choices(spec: Any) -> list[str] | None:
    """Choices of a combo input: old form [[a, b], {...}], new form ["COMBO", {"options": [a, b]}]."""
    if isinstance(spec, list) and spec:
        if isinstance(spec[0], list):
            return [str(x) for x in spec[0]]
        if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
            return [str(x) for x in spec[1].get("options", [])]
    return None


def finished(entry: dict[str, Any]) -> bool:
    """The history entry is final (however it went)."""
    status = entry.get("status") or {}
    return bool(status.get("completed")) or status.get("status_str") in ("success", "error")


def raise_for_failure(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry when its prompt succeeded; otherwise the error its status messages explain."""
    status = entry.get("status") or {}
    if status.get("status_str", "success") == "success":
        return entry
    error = status_message(entry, "execution_error")
    if error is not None:
        raise execution_failure(error)
    interrupted = status_message(entry, "execution_interrupted")
    if interrupted is not None:
        # Not requested by us (cancel() is handled before): someone else interrupted ComfyUI; try again.
        raise RetryableError(
            f"ComfyUI prompt interrupted at node {interrupted.get('node_id')}",
            code="interrupted",
            details=interrupted,
        )
    raise RetryableError("ComfyUI reported an error without details", code="execution_error")


def parse_payload(payload: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """(workflow, images) of a job payload; PermanentError names what is missing."""
    workflow = payload.get("workflow", payload.get("prompt"))
    if not isinstance(workflow, dict) or not workflow:
        raise PermanentError(
            "payload needs 'workflow' (or 'prompt'): a non-empty ComfyUI API-format graph", code="bad_payload"
        )
    images = payload.get("images") or []
    if not isinstance(images, list):
        raise PermanentError("payload.images must be a list of {name, image}", code="bad_payload")
    return workflow, images
