"""A ComfyUI stand-in speaking the real HTTP/WS protocol, with switchable misbehaviour.

    python -m appliance.standins.comfyui --port 8188 [--data-dir DIR] [--step-delay 0.05]
        [--fail-mode none|execution_error|oom|hang|drop_ws|crash] [--fail-times N] [--checkpoints a,b] [--vram-gb 24]

Routes as ComfyUI (also under /api): /system_stats /object_info /prompt /queue /history /history/{id} /view
/upload/image /interrupt /free /ws; /view answers with the type guessed from the file name, as ComfyUI does (a
.json output, e.g. from the custom-node-style StandinSaveJSON, comes back as application/json). Control: GET /__standin/stats, POST /__standin/config {field: value},
POST /__standin/restart (loses queue and history like a real restart), POST /__standin/pause {"paused": bool}.
Fail modes hit the first StandinSampler (else the first output node) of a prompt: `execution_error` and `oom`
fail it like ComfyUI does, `hang` never returns and ignores interrupts, `drop_ws` closes every socket after the
first step, `crash` exits the process (in the CLI) mid-node.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from appliance.standins import comfyui_nodes as nodes
from appliance.standins import process
from appliance.standins.comfyui_routes import make_app
from appliance.standins.comfyui_state import FAIL_MODES, Behaviour, ComfyStandin

__all__ = ["FAIL_MODES", "Behaviour", "ComfyStandin", "main", "make_app"]


def main(argv: list[str] | None = None) -> None:
    # ComfyUI's own flags, so `appliance comfyui` can start the stand-in exactly as it starts ComfyUI.
    parser = process.parser("comfyui", __doc__, 8188, "--listen", api_key=False)
    parser.add_argument(
        "--cpu", action="store_true", help="accepted for compatibility (there is no GPU here)"
    )
    parser.add_argument("--cuda-device", type=int, help="accepted for compatibility")
    parser.add_argument("--base-directory", type=Path, dest="data_dir", help="same as --data-dir")
    # ComfyUI's directory flags, with its semantics: the temp directory is `<--temp-directory>/temp`.
    parser.add_argument("--output-directory", type=Path, help="where outputs are written")
    parser.add_argument("--input-directory", type=Path, help="where uploads are written")
    parser.add_argument("--temp-directory", type=Path, help="temp files go to its `temp` subdirectory")
    parser.add_argument("--user-directory", type=Path, help="accepted; created like ComfyUI does")
    parser.add_argument("--database-url", help="accepted for compatibility")
    parser.add_argument("--disable-auto-launch", action="store_true", help="accepted for compatibility")
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="output/temp/input live here (default: a temp dir)"
    )
    parser.add_argument("--step-delay", type=float, default=0.0, help="seconds per StandinSampler step")
    parser.add_argument("--fail-mode", choices=FAIL_MODES, default="none")
    parser.add_argument("--fail-times", type=int, default=None)
    parser.add_argument("--checkpoints", default=",".join(nodes.DEFAULT_CHECKPOINTS))
    parser.add_argument("--vram-gb", type=float, default=24.0)
    args = parser.parse_args(argv)
    behaviour = Behaviour(
        step_delay_s=args.step_delay,
        fail_mode=args.fail_mode,
        fail_times=args.fail_times,
        checkpoints=[c for c in args.checkpoints.split(",") if c],
        vram_gb=args.vram_gb,
        allow_exit=True,
    )
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="comfyui-standin-"))
    dirs = {
        kind: path
        for kind, path in [
            ("output", args.output_directory),
            ("input", args.input_directory),
            ("temp", args.temp_directory / "temp" if args.temp_directory else None),
        ]
        if path is not None
    }
    if args.user_directory is not None:
        args.user_directory.mkdir(parents=True, exist_ok=True)
    state = ComfyStandin(data_dir, behaviour, dirs)
    process.run(make_app(state), args)


if __name__ == "__main__":
    main()
