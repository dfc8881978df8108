"""`appliance worker`: run one worker process (one GPU's ComfyUI, or one slot of an API connector).

appliance worker --gpu 0                      # ComfyUI on GPU 0 (port comfyui.base_port + 0)
appliance worker --connector openai --index 1 # API slot openai1
appliance worker --slot echo0                 # what appliance-worker@echo0.service runs
"""

from __future__ import annotations

import argparse
import dataclasses

from appliance.commands import CommandError, ConfigCommandError, ExitCode, command_help, run_async


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "worker",
        help=command_help("worker"),
        description="Claim jobs from the queue and run them on one connector. Stops gracefully on SIGTERM "
        "(running jobs get worker.drain_grace_s, then go back to the queue); a second signal hands "
        "them back at once.",
    )
    which = parser.add_argument_group("which worker (exactly one of --slot, --gpu, --connector)")
    which.add_argument(
        "--slot", help="systemd instance name: gpu<N> or <connector><N> (e.g. gpu0, openai1, echo0)"
    )
    which.add_argument("--gpu", type=int, metavar="N", help="serve the ComfyUI instance of GPU N")
    which.add_argument(
        "--connector", metavar="NAME", help="serve API connector NAME (openai, replicate, runpod, echo)"
    )
    which.add_argument("--index", type=int, metavar="N", help="slot index of --connector (default 0)")
    parser.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help="jobs at once (API connectors; default connectors.<name>.concurrency)",
    )
    parser.add_argument("--config", help="config file (TOML, YAML or JSON; default: $APPLIANCE_CONFIG)")
    parser.add_argument(
        "--redis-url",
        help="Redis URL (default: $APPLIANCE_REDIS_URL or the config file); "
        "put the password in redis.password_file, not here",
    )
    parser.add_argument(
        "--queues",
        metavar="Q1,Q2",
        help="serve these queues, in turn (default: worker.queues, else redis.queue)",
    )
    parser.set_defaults(handler=run_worker, long_running=True)


def run_worker(args: argparse.Namespace) -> int:
    from appliance.config import ConfigError, load_settings
    from appliance.identity import SlotError, slot_from_arguments
    from appliance.secrets import SecretError, split_url_password
    from appliance.worker.runtime import Worker, WorkerError
    from appliance.worker.wiring import WiringError

    try:
        slot = slot_from_arguments(slot=args.slot, gpu=args.gpu, connector=args.connector, index=args.index)
    except SlotError as exc:
        raise CommandError(str(exc)) from None
    if args.concurrency is not None and args.concurrency < 1:
        raise CommandError(f"--concurrency must be 1 or more, not {args.concurrency}")
    if args.concurrency is not None and slot.gpu and args.concurrency != 1:
        raise CommandError("--concurrency does not apply to GPU workers: one ComfyUI runs one job at a time")
    try:
        settings = load_settings(args.config).settings
        connection = settings.redis_connection()
    except (ConfigError, SecretError) as exc:
        raise ConfigCommandError(str(exc)) from None
    if args.queues is not None:
        names = [n.strip() for n in args.queues.split(",") if n.strip()]
        if not names:
            raise CommandError("--queues needs at least one queue name, e.g. --queues images,text")
        worker_section = settings.worker.model_copy(update={"queues": names})
        settings = settings.model_copy(update={"worker": worker_section})
    if args.redis_url:
        from appliance.commands.connection import checked_url_flag

        url, password = split_url_password(checked_url_flag(args.redis_url))
        connection = dataclasses.replace(
            connection, url=url, password=password if password is not None else connection.password
        )
    from appliance.worker.packages import missing_packages

    missing = missing_packages(settings, [slot.connector])
    if missing:  # a restart would not install it: say so once instead of crash-looping on the import
        raise ConfigCommandError(f"worker {slot.name}: {missing[0]}")
    try:
        worker = Worker(settings, slot, connection=connection, concurrency=args.concurrency)
    except (WiringError, ValueError, ImportError) as exc:
        raise CommandError(f"worker {slot.name}: {exc}") from None

    async def main() -> int:
        from appliance.queue.redisclient import RedisModeError

        try:
            return await worker.run()
        except RedisModeError as exc:  # redis.mode does not match the server: a restart cannot fix it
            raise ConfigCommandError(f"worker {worker.worker_id}: {exc}") from None
        except WorkerError as exc:
            raise CommandError(f"worker {worker.worker_id}: {exc}", ExitCode.REDIS) from None

    return run_async(main())
