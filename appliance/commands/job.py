"""`appliance job submit|get|wait|cancel|list|stats`: the queue's command-line contract.

`submit` prints the new job id as its last line (`--json`: the record). Errors are one line on stderr with a
non-zero exit: 2 bad input, 3 unknown job, 4 Redis unreachable, 1 the job ended failed/dead/cancelled (wait),
124 wait timed out.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from appliance.commands import CommandError, ExitCode, command_help, print_json, run_async
from appliance.commands.connection import add_redis_arguments, connect_queue

#: --requires keys and how their values parse: a type, "list" (comma list) or "append:<field>" (repeatable).
REQUIREMENT_KEYS: dict[str, type | str] = {
    "gpu_memory_gb": float,
    "ram_gb": float,
    "cpu_cores": int,
    "gpu_count": int,
    "machine_type": str,
    "models": "list",
    "model": "append:models",
    "isolation": str,
    "pool": str,
    "region": str,
    "tags": "list",
    "tag": "append:tags",
    "not_tags": "list",
    "not_tag": "append:not_tags",
    "workflow": str,
}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    job = subparsers.add_parser("job", help=command_help("job"))
    commands = job.add_subparsers(dest="job_command", metavar="ACTION", required=True)

    submit = commands.add_parser("submit", help="enqueue a job; prints its id as the last line")
    add_spec_arguments(submit)
    start = submit.add_mutually_exclusive_group()
    start.add_argument(
        "--run-at",
        metavar="TIME",
        help="start no earlier than TIME: ISO 8601 (UTC unless it names a zone) or epoch ms",
    )
    start.add_argument(
        "--delay", type=float, metavar="SECONDS", help="start no earlier than SECONDS from now"
    )
    add_dependency_arguments(submit)
    submit.add_argument("--id", help="caller-chosen job id (idempotency key)")
    submit.add_argument("--json", action="store_true", help="print the job record as JSON")
    submit.set_defaults(handler=_submit)

    get = commands.add_parser("get", help="show a job and its status")
    get.add_argument("job_id")
    get.add_argument("--json", action="store_true")
    get.set_defaults(handler=_get)

    wait = commands.add_parser("wait", help="wait until a job finishes (progress bar on a terminal)")
    wait.add_argument("job_id")
    wait.add_argument("--timeout", type=float, help="give up after this many seconds (exit 124)")
    wait.add_argument("--json", action="store_true")
    wait.set_defaults(handler=_wait)

    cancel = commands.add_parser("cancel", help="cancel a waiting job, or ask its worker to stop it")
    cancel.add_argument("job_id")
    cancel.add_argument("--json", action="store_true")
    cancel.set_defaults(handler=_cancel)

    listing = commands.add_parser("list", help="list jobs from the queue's indexes")
    listing.add_argument(
        "--status",
        choices=["pending", "blocked", "claimed", "running", "completed", "failed", "cancelled", "dead"],
    )
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_list)

    stats = commands.add_parser("stats", help="queue depths, totals, shapes and unworkable jobs")
    stats.add_argument("--json", action="store_true")
    stats.add_argument("--queues", metavar="Q1,Q2", help="several queues in turn (--json: a list)")
    stats.set_defaults(handler=_stats)

    for sub in (submit, get, wait, cancel, listing, stats):
        add_redis_arguments(sub)


def add_dependency_arguments(parser: argparse.ArgumentParser) -> None:
    """`--after ID` (repeatable) and `--on-parent-failure`: the job waits for other jobs (submit only)."""
    parser.add_argument(
        "--after",
        action="append",
        default=[],
        metavar="ID",
        help="run only after job ID completed (repeatable; each must exist); its result reaches this job",
    )
    parser.add_argument(
        "--on-parent-failure",
        choices=["fail", "cancel", "ignore"],
        help="when a parent fails, dies or is cancelled: fail this job (default), cancel it, or ignore that parent",
    )


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that describe a job (submit, schedule add); `spec_from_args` reads them back."""
    parser.add_argument(
        "--service", required=True, help="service that runs it (comfyui, openai_text, echo, ...)"
    )
    parser.add_argument(
        "--payload", default="{}", help="job payload as JSON, or @FILE to read it from a file"
    )
    parser.add_argument("--priority", type=int, default=0)
    parser.add_argument("--pool")
    parser.add_argument("--customer", help="customer id (fair share, pauses, isolation)")
    parser.add_argument("--workflow-id")
    parser.add_argument(
        "--requires",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"requirement, repeatable; keys: {', '.join(sorted(REQUIREMENT_KEYS))}",
    )
    parser.add_argument("--max-retries", type=int, default=3)
    parser.add_argument("--timeout", type=float, help="per-attempt time limit, seconds")


def spec_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The job described by `add_spec_arguments`' flags, as a dict for parse_spec (unset fields left out)."""
    spec = {
        "service": args.service,
        "payload": _load_payload(args.payload),
        "priority": args.priority,
        "requirements": parse_requirements(args.requires),
        "customer_id": args.customer,
        "workflow_id": args.workflow_id,
        "pool": args.pool,
        "max_retries": args.max_retries,
        "timeout_s": args.timeout,
        "id": getattr(args, "id", None),
        "run_at": getattr(args, "run_at", None),
        "delay_s": getattr(args, "delay", None),
        "after": getattr(args, "after", None) or None,
        "on_parent_failure": getattr(args, "on_parent_failure", None),
    }
    return {k: v for k, v in spec.items() if v is not None}


def parse_requirements(pairs: list[str]) -> dict[str, Any]:
    """`--requires gpu_memory_gb=24 --requires tag=sdxl` -> a requirements dict; errors name the pair."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CommandError(f"--requires {pair!r}: expected KEY=VALUE")
        kind = REQUIREMENT_KEYS.get(key)
        if kind is None:
            raise CommandError(
                f"--requires {pair!r}: unknown key {key!r} (known: {', '.join(sorted(REQUIREMENT_KEYS))})"
            )
        if kind == "list":
            result[key] = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(kind, str) and kind.startswith("append:"):
            result.setdefault(kind.split(":", 1)[1], []).append(value.strip())
        elif isinstance(kind, type):
            try:
                result[key] = kind(value)
            except ValueError:
                raise CommandError(f"--requires {pair!r}: {key} must be a {kind.__name__}") from None
    return result


def _load_payload(raw: str) -> dict[str, Any]:
    source = "--payload"
    if raw.startswith("@"):
        source = raw[1:]
        try:
            with open(source, encoding="utf-8") as handle:
                raw = handle.read()
        except OSError as exc:
            raise CommandError(f"--payload: cannot read {source}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise CommandError(
                f"--payload: {source} is not UTF-8 text (byte {exc.start}); JSON payloads are UTF-8"
            ) from None
    payload = parse_json_object(raw, source)
    if not isinstance(payload, dict):
        raise CommandError(f"{source}: the payload must be a JSON object, got {type(payload).__name__}")
    return payload


def parse_json_object(raw: str, source: str) -> Any:
    """`raw` parsed as JSON; CommandError names `source` and what is wrong (also for absurd nesting)."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CommandError(
            f"{source}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        # The decoder recurses per nesting level: 100,000 `[` exhaust the stack long before any limit of ours.
        raise CommandError(f"{source}: JSON nested too deeply to parse") from None


def _job_json(job: Any) -> dict[str, Any]:
    return job.model_dump(mode="json")


def _submit(args: argparse.Namespace) -> int:
    return run_async(_submit_async(args, spec_from_args(args)))


async def _submit_async(args: argparse.Namespace, spec: dict[str, Any]) -> int:
    from appliance.queue import DuplicateJob, InvalidJob, NotDurable, parse_spec

    try:
        parsed = parse_spec(spec)
    except InvalidJob as exc:
        raise CommandError(str(exc)) from None
    queue = await connect_queue(args)
    try:
        job = await queue.submit(parsed)
    except (DuplicateJob, InvalidJob) as exc:  # InvalidJob: over queue.max_payload_bytes
        raise CommandError(str(exc)) from None
    except NotDurable as exc:  # the job exists; say its id so a retry can use --id instead of a second job
        raise CommandError(f"job {', '.join(exc.job_ids)}: {exc}", ExitCode.REDIS) from None
    finally:
        await queue.close()
    if args.json:
        print_json(_job_json(job))
    print(job.id)
    return 0


def _get(args: argparse.Namespace) -> int:
    return run_async(_get_async(args))


async def _get_async(args: argparse.Namespace) -> int:
    queue = await connect_queue(args)
    try:
        job = await queue.get(args.job_id)
    finally:
        await queue.close()
    if job is None:
        raise CommandError(
            f"job {args.job_id!r} not found (unknown id, or its record expired)", ExitCode.NOT_FOUND
        )
    if args.json:
        print_json(_job_json(job))
    else:
        _print_job(job)
    return 0


def _print_job(job: Any) -> None:
    status = job.status.value + (" (unworkable: no live worker can run it)" if job.unworkable else "")
    if job.held_by:
        status += f" (held: {job.held_by})"
    if job.status.value == "blocked":
        status += (
            f" (waiting on {len(job.waiting_on)} of {len(job.after)} parents: {', '.join(job.waiting_on)})"
        )
    rows = [
        ("id", job.id),
        ("service", job.service),
        ("status", status),
        ("attempts", job.attempts),
        ("priority", job.priority),
        ("worker", job.worker_id or "-"),
        ("created", job.created_at),
        ("claimed", job.claimed_at or "-"),
        ("finished", job.finished_at or "-"),
    ]
    if job.progress:
        rows.append(
            ("progress", f"{job.progress.get('percent', 0)}% {job.progress.get('message', '')}".strip())
        )
    if job.next_attempt_at is not None and job.status.value == "pending":
        rows.append(("next try", job.next_attempt_at))  # waiting out its retry backoff
    if job.after:
        rows.append(("after", f"{', '.join(job.after)} (on parent failure: {job.on_parent_failure.value})"))
    if job.error:
        rows.append(("error", job.error))
    if job.result is not None:
        rows.append(("result", json.dumps(job.result)[:500]))
    for name, value in rows:
        print(f"{name:>9}  {value}")


def _wait(args: argparse.Namespace) -> int:
    return run_async(_wait_async(args))


def _progress_bar(job: Any) -> None:
    percent = float((job.progress or {}).get("percent", 0))
    filled = int(percent / 5)
    message = str((job.progress or {}).get("message", ""))[:40]
    sys.stderr.write(
        f"\r{job.status.value:>9} [{'#' * filled}{'.' * (20 - filled)}] {percent:5.1f}% {message:<40}"
    )
    sys.stderr.flush()


async def _wait_async(args: argparse.Namespace) -> int:
    from appliance.queue import JobNotFound, JobStatus

    queue = await connect_queue(args)
    show = _progress_bar if sys.stderr.isatty() and not args.json else None
    try:
        job = await queue.wait(args.job_id, timeout_s=args.timeout, on_progress=show)
    except JobNotFound as exc:
        raise CommandError(str(exc), ExitCode.NOT_FOUND) from None
    except TimeoutError:
        raise CommandError(
            f"job {args.job_id!r} did not finish within {args.timeout}s", ExitCode.TIMEOUT
        ) from None
    finally:
        await queue.close()
    if show:
        _progress_bar(job)
        sys.stderr.write("\n")
    if args.json:
        print_json(_job_json(job))
    else:
        _print_job(job)
    return ExitCode.OK if job.status is JobStatus.COMPLETED else ExitCode.FAILED


def _cancel(args: argparse.Namespace) -> int:
    return run_async(_cancel_async(args))


async def _cancel_async(args: argparse.Namespace) -> int:
    from appliance.queue import JobAlreadyFinished, JobNotFound

    queue = await connect_queue(args)
    try:
        outcome = await queue.cancel(args.job_id)
    except JobNotFound as exc:
        raise CommandError(str(exc), ExitCode.NOT_FOUND) from None
    except JobAlreadyFinished as exc:
        raise CommandError(str(exc), ExitCode.FAILED) from None
    finally:
        await queue.close()
    if args.json:
        print_json({"id": args.job_id, "outcome": outcome})
    else:
        print(
            f"{args.job_id}: {'cancelled' if outcome == 'cancelled' else 'cancellation requested from its worker'}"
        )
    return 0


def _list(args: argparse.Namespace) -> int:
    return run_async(_list_async(args))


async def _list_async(args: argparse.Namespace) -> int:
    from appliance.queue import JobStatus

    if args.limit < 1:
        raise CommandError("--limit must be at least 1")
    queue = await connect_queue(args)
    try:
        jobs = await queue.list_jobs(JobStatus(args.status) if args.status else None, args.limit)
    finally:
        await queue.close()
    if args.json:
        print_json([_job_json(j) for j in jobs])
        return 0
    print(f"{'ID':<34} {'SERVICE':<14} {'STATUS':<10} {'ATT':>3}  {'PROGRESS':>8}  WORKER")
    for job in jobs:
        percent = f"{(job.progress or {}).get('percent', 0):.0f}%" if job.progress else "-"
        status = "unworkable" if job.unworkable else "held" if job.held_by else job.status.value
        print(
            f"{job.id:<34} {job.service:<14} {status:<10} {job.attempts:>3}  {percent:>8}  {job.worker_id or '-'}"
        )
    return 0


def _stats(args: argparse.Namespace) -> int:
    return run_async(_stats_async(args))


async def _stats_async(args: argparse.Namespace) -> int:
    names = [n.strip() for n in (args.queues or "").split(",") if n.strip()]
    if args.queues is not None and not names:
        raise CommandError("--queues needs at least one queue name, e.g. --queues images,text")
    every = []
    for name in names or [None]:
        queue = await connect_queue(argparse.Namespace(**{**vars(args), "queue": name or args.queue}))
        try:
            every.append(await queue.stats())
        finally:
            await queue.close()
    if args.json:
        dumped = [stats.model_dump(mode="json") for stats in every]
        print_json(dumped if names else dumped[0])
        return 0
    for stats in every:
        _print_stats(stats)
    return 0


def _print_stats(stats: Any) -> None:
    print(
        f"queue {stats.queue}: {stats.waiting} waiting, {stats.delayed} delayed, {stats.active} active, "
        f"{stats.dead} dead, {stats.unworkable} unworkable, {stats.workers} live workers"
        + (f", {stats.blocked} waiting for parents" if stats.blocked else "")
    )
    print("totals: " + ", ".join(f"{k}={v}" for k, v in sorted(stats.totals.items())))
    if stats.paused or stats.held:
        print(
            f"paused: {', '.join(stats.paused) or '-'}; {stats.held} jobs held out of line by a customer's pause"
        )
    if stats.limited:
        print(f"limits: {stats.limited} jobs held out of line by a customer's limit (not unworkable)")
        for customer, why in sorted(stats.limited_by.items()):
            print(f"  {customer}: {why}")
    for shape in stats.shapes:
        oldest = f"{shape.oldest_wait_s:.1f}s" if shape.oldest_wait_s is not None else "-"
        flag = "" if shape.live_workers else "  UNWORKABLE" if shape.waiting else "  (no live worker)"
        print(
            f"  {shape.shape}  waiting={shape.waiting:<6} next-in-line-wait={oldest:<8} "
            f"{json.dumps(shape.requirements, sort_keys=True)}{flag}"
        )
