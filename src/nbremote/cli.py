"""The command line: parse, call one core function, render. Nothing else."""

from __future__ import annotations

import os
import shlex
import sys
import time

import click

from nbremote import (
    __version__,
    completion,
    jobs,
    keeper,
    profiles,
    reach,
    runners,
    session,
    sessions,
    slurm,
)
from nbremote.console import Console, interrupted
from nbremote.durations import ago
from nbremote.errors import ExitCode, NbremoteError, exit_code_table
from nbremote.logs import log_steps
from nbremote.remote import Host, place_for
from nbremote.runner import uses_slurm
from nbremote.ssh import parse_target
from nbremote.tables import table

TIMEOUT_HELP = "Seconds to wait for the host to answer."
SLURM_HELP = (
    'sbatch options, quoted as one argument, e.g. "--gres=gpu:1 --time=2:00:00"; they replace '
    "the host profile's options of the same name. Runs Jupyter in a Slurm batch job."
)


def _interactive() -> bool:
    return sys.stdin.isatty()


class _Commands(click.Group):
    """`nbremote server ...` is loaded only when asked for: it is run on the server, and the
    laptop's commands (and their start-up time) have no use for the server set-up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), "server"])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "server":
            from nbremote.server import cli as server_cli

            return server_cli.server
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]}, epilog=f"Exit codes: {exit_code_table()}."
)
@click.version_option(__version__, prog_name="nbremote")
@click.option("-v", "--verbose", is_flag=True, help="Log each step (ssh commands, agent calls) to stderr.")
@click.option("--debug", is_flag=True, help="Show a traceback on errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, debug: bool) -> None:
    """One command from your laptop to a persistent Jupyter on your server.

    \b
    nbremote up gpubox        start (or reattach to) Jupyter on gpubox and open it here
    nbremote up               the same on this machine, no server needed
    nbremote ls gpubox        the Jupyter servers nbremote runs there
    nbremote down gpubox      stop it
    """
    ctx.obj = {"debug": debug}
    if verbose or debug:
        log_steps()


@cli.command()
@click.argument("host", required=False, shell_complete=completion.complete_host)
@click.option(
    "--dir",
    "directory",
    help="Directory on the server to run Jupyter in (one server per directory) [default: the host profile's, else ~].",
)
@click.option("--lab/--notebook", "lab", default=None, help="JupyterLab (default) or the classic Notebook UI.")
@click.option("--env", metavar="NAME_OR_PATH", help="Conda environment name, or venv/conda path, holding Jupyter.")
@click.option("--port", type=click.IntRange(1, 65535), help="Local port [default: the last one used, else free].")
@click.option("--no-browser", is_flag=True, help="Print the URL without opening a browser.")
@click.option("--detach", is_flag=True, help="Return at once and leave the forward in place.")
@click.option(
    "--socket",
    "use_socket",
    is_flag=True,
    help="Jupyter listens on a Unix socket in a private (0700) directory on the server, "
    "not on a loopback port: other users there cannot even connect.",
)
@click.option(
    "--keep-output/--no-keep-output",
    default=None,
    help="The server runs the cells and keeps their output while no browser is attached "
    "(needs jupyter-server-nbmodel in the server's Jupyter) [default: the host profile's keep_output].",
)
@click.option(
    "--forward",
    "forward_specs",
    multiple=True,
    metavar="REMOTE_PORT[:LOCAL_PORT]",
    help="Also forward this port of the server's loopback (TensorBoard's 6006, say); repeatable. "
    "Kept with the session like `nbremote forward`.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--slurm", "slurm_text", metavar='"OPTIONS"', help=SLURM_HELP)
@click.option("--timeout", type=click.FloatRange(min=1), default=10.0, show_default=True, help=TIMEOUT_HELP)
def up(
    host,
    directory,
    lab,
    env,
    port,
    no_browser,
    detach,
    use_socket,
    keep_output,
    forward_specs,
    as_json,
    timeout,
    slurm_text,
) -> None:
    """Start or reattach to Jupyter on HOST and forward it to a local port.

    HOST is anything ssh accepts: an alias from ~/.ssh/config, user@host, or
    ssh://user@host:port. Without HOST, Jupyter runs on this machine.
    Jupyter keeps running after this command ends; `nbremote down` stops it.
    On a Slurm cluster (profile scheduler = "slurm", or --slurm), HOST is the
    login node and Jupyter runs in a batch job on a compute node.
    """
    console = Console.for_terminal(json_mode=as_json)
    opts = session.options_for(
        host,
        directory=directory,
        lab=lab,
        env=env,
        port=port,
        timeout=timeout,
        socket=use_socket,
        keep_output=keep_output,
    )
    directory = opts.dir
    runner = runners.for_up(host, slurm_text)
    if use_socket and runner.name == "slurm":
        raise click.UsageError("--socket is for a server of its own: a Slurm job's Jupyter is on a compute node")
    if opts.keep_output and runner.name == "slurm":
        raise click.UsageError("--keep-output is not available for a Slurm job's Jupyter yet")
    extra: list[tuple[int, int | None]] = []
    if forward_specs:
        from nbremote import forwards  # up without --forward has no use for it: kept out of its start-up

        extra = [forwards.parse_spec(spec) for spec in forward_specs]
    if extra and (not host or runner.name == "slurm"):
        raise click.UsageError("--forward needs a HOST that runs Jupyter itself (not this machine, not Slurm)")
    place = place_for(host, timeout=timeout, interactive=_interactive(), persist=True, notify=console.done)
    paused = (
        keeper.pause(place.host, directory, logging_in=not place.connection.may_have_master(), holding=not detach)
        if isinstance(place, Host)
        else []
    )
    # The login runs while the rest of `up` gets ready; a cold `up` waits on it first.
    place.begin_login()
    try:
        result = session.up(place, runner, opts, console)
    except BaseException:
        place.abandon_login()
        keeper.resume(place.host, paused)
        raise
    # The other sessions' keepers go on over this master; this one's, unless `up` holds it itself.
    keeper.resume(place.host, [d for d in paused if d != directory])
    for remote, local in extra:
        from nbremote import forwards

        added = forwards.add(place, forwards.session_for(place.host, directory), remote, local, timeout=timeout)
        console.done(f"localhost:{added.local_port} → {place.label}:{remote}", added.seconds)
    _show_url(result, as_json, no_browser, console)
    stop = f"nbremote down {host}" if host else "nbremote down"
    job = result.served.job_id
    if detach or (job and not host):
        if host:
            assert result.host is not None  # set whenever a host was given
            keeper.spawn(result.host, directory)
        console.note(
            f"Slurm job {job} keeps running; `{stop}` cancels it."
            if job
            else f"the notebook keeps running; `{stop}` stops it."
        )
        return
    console.note(
        f"Ctrl-C stops the forwarding; Slurm job {job} keeps running. `{stop}` cancels it."
        if job
        else f"Ctrl-C stops {'the forwarding' if host else 'this view'}; the notebook keeps running. `{stop}` stops it."
    )
    keeper.hold(place, runner, result.record, result.url, created_master=result.created_master, console=console)


def _show_url(result: session.UpResult, as_json: bool, no_browser: bool, console: Console) -> None:
    if not result.shown:
        session.show_url(result, console, as_json=as_json)
    if not no_browser:
        opened = console.open_browser(result.url)
        console.note("(opened in your browser)" if opened else "no browser found: open the URL above yourself")


@cli.command()
@click.argument("host", required=False, shell_complete=completion.complete_host)
@click.option("--dir", "directory", help="Directory whose Jupyter to stop [default: the host profile's, else ~].")
@click.option("--all", "all_dirs", is_flag=True, help="Stop every Jupyter nbremote runs on HOST.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--timeout", type=click.FloatRange(min=1), default=10.0, show_default=True, help=TIMEOUT_HELP)
def down(host, directory, all_dirs, as_json, timeout) -> None:
    """Stop Jupyter on HOST (this machine without HOST) and remove its forward."""
    console = Console.for_terminal(json_mode=as_json)
    directory = directory if directory is not None else profiles.up_defaults(host).dir or "~"
    runner = runners.for_host(host)
    place = place_for(host, timeout=timeout, interactive=_interactive(), persist=False, notify=console.done)
    stopped = session.down(place, runner, directory=directory, all_dirs=all_dirs, timeout=timeout, console=console)
    if as_json:
        console.emit_json({"stopped": stopped})
        return
    if runner.name == "slurm":
        if not stopped:
            console.note(f"no Slurm job of nbremote's for {'any directory' if all_dirs else directory} on {host}")
        for item in stopped:
            console.done(
                f"Slurm job {item.get('job_id')} ({item.get('dir')}) on {host}: "
                + ("cancelled" if item.get("was") != item.get("state") else f"had ended ({item.get('state')})")
            )
        return
    where = host or "this machine"
    if not stopped:
        console.note(f"no Jupyter of nbremote's was running in {'any directory' if all_dirs else directory} on {where}")
    for item in stopped:
        console.done(f"stopped Jupyter in {item.get('dir')} (pid {item.get('pid')}) on {where}")


@cli.command(name="ls")
@click.argument("host", required=False, shell_complete=completion.complete_host)
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@click.option("--show-token", is_flag=True, help="Show each URL's token in full (masked by default).")
@click.option("--timeout", type=click.FloatRange(min=1), default=10.0, show_default=True, help=TIMEOUT_HELP)
def ls_command(host, as_json, show_token, timeout) -> None:
    """List the Jupyter servers nbremote runs on HOST (this machine without HOST)."""
    console = Console.for_terminal(json_mode=as_json)
    runner = runners.for_host(host)
    place = place_for(host, timeout=timeout, interactive=_interactive(), persist=False, notify=console.done)
    servers = session.ls(place, runner, timeout=timeout, show_token=show_token)
    # How the host was reached and when each way in last answered (None for this machine).
    path = place.path() if isinstance(place, Host) else None
    if not as_json and path is not None and path["address"]:
        console.result(f"{place.label} {reach.path_text(path)}")
        if len(path["addresses"]) > 1:
            console.result(f"  ways in  {reach.ways_text(path['addresses'], time.time())}")
    if runner.name == "slurm":
        if as_json:
            console.emit_json({"scheduler": "slurm", "servers": servers, "path": path})
            return
        if not servers:
            console.result(f"no Slurm job of nbremote's on {host}")
            return
        lines, warnings = slurm.render_ls(servers)
        for line in lines:
            console.result(line)
        for warning in warnings:
            console.warn(warning)
        return
    if as_json:
        console.emit_json({"servers": servers, "path": path})
        return
    if not servers:
        console.result(f"no Jupyter of nbremote's on {host or 'this machine'}")
        return
    rows = [("DIR", "STATE", "PID", "FORWARD", "STARTED", "KERNELS", "LAST ACTIVITY")]
    for s in servers:
        kernels = "-" if s["kernels"] is None else f"{s['kernels']} ({s['busy']} busy)"
        forward = f"localhost:{s['local_port']}" if s["local_port"] else f"remote :{s['remote_port']}"
        if s["keeper_pid"]:
            forward += " (kept)"
        rows.append(
            (
                str(s["dir"]),
                "running" if s["running"] else "stopped",
                str(s["pid"]),
                forward,
                ago(s["started"]),
                kernels,
                ago(s["last_activity"]),
            )
        )
    for line in table(rows):
        console.result(line)
    for s in servers:
        if s["url"]:
            console.result(f"{s['dir']}: {s['url']}")
        extra = s["forwards"]
        assert isinstance(extra, list)
        for f in extra:
            console.result(f"{s['dir']}: localhost:{f['local_port']} → {host}:{f['remote_port']}")


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("host", shell_complete=completion.complete_host)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--name", help="Name of the job [default: from the command, e.g. python-1].")
@click.option("--dir", "directory", default="~", show_default=True, help="Directory on the server to run in.")
@click.option("--env", metavar="NAME_OR_PATH", help="Conda environment name, or venv/conda path, to run in.")
@click.option("--follow", is_flag=True, help="Stream the output until the job ends; Ctrl-C detaches, it does not kill.")
@click.option(
    "--slurm",
    "slurm_text",
    metavar='"OPTIONS"',
    help='sbatch options, e.g. "--gres=gpu:1 --time=1:00:00": submit COMMAND as a Slurm batch job.',
)
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@click.option("--timeout", type=click.FloatRange(min=1), default=10.0, show_default=True, help=TIMEOUT_HELP)
def run(host, command, name, directory, env, follow, slurm_text, as_json, timeout) -> None:
    """Start COMMAND on HOST, detached: it keeps running after this ends.

    \b
    nbremote run gpubox --name resnet -- python train.py --epochs 90
    Each argument reaches the server exactly as typed, with no shell in between.
    On a Slurm cluster (profile scheduler = "slurm", or --slurm) it is a batch job.
    """
    from nbremote import status

    console = Console.for_terminal(json_mode=as_json)
    options = slurm.options_for(host, slurm_text) if uses_slurm(host, slurm_text) else None
    job = jobs.run(
        host=host,
        argv=list(command),
        name=name,
        directory=directory,
        env=env,
        timeout=timeout,
        interactive=_interactive(),
        slurm_options=options,
    )
    if as_json:
        console.emit_json(job.to_json())
    else:
        console.result(job.name)
        launcher = f"Slurm job {job.slurm_job_id}, {status.job_state(job)}" if job.slurm_job_id else job.launcher
        console.note(
            f"started in {job.dir} on {host} ({launcher}); "
            f"`nbremote logs {host} {job.name} -f` follows it, `nbremote kill {host} {job.name}` stops it"
        )
    if follow:
        _follow(host, job.name, console, timeout)


def _follow(host, name, console, timeout, tail=None) -> None:
    from nbremote import status

    out = sys.stdout.buffer

    def write(chunk: bytes) -> None:
        out.write(chunk)
        out.flush()

    try:
        job = jobs.logs(
            host=host,
            name=name,
            tail=tail,
            follow=True,
            write=write,
            console=console,
            timeout=timeout,
            interactive=_interactive(),
        )
    except KeyboardInterrupt:
        console.note(f"detached; job {name} keeps running on {host or 'this machine'}")
        return
    console.note(f"job {name} {status.job_state(job)}")


@cli.command(name="jobs")
@click.argument("host", shell_complete=completion.complete_host)
@click.option("--prune", is_flag=True, help="Forget finished jobs (their logs stay).")
@click.option("--purge", is_flag=True, help="With --prune, delete their logs too.")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@click.option("--timeout", type=click.FloatRange(min=1), default=10.0, show_default=True, help=TIMEOUT_HELP)
def jobs_command(host, prune, purge, as_json, timeout) -> None:
    """List the jobs started with `nbremote run` on HOST."""
    from nbremote import status

    if purge and not prune:
        raise click.UsageError("--purge goes with --prune")
    console = Console.for_terminal(json_mode=as_json)
    listed = jobs.list_jobs(host=host, prune=prune, purge=purge, timeout=timeout, interactive=_interactive())
    if as_json:
        console.emit_json({"jobs": [j.to_json() for j in listed.jobs], "pruned": listed.pruned, "gpu": listed.gpu})
        return
    for name in listed.pruned:
        console.done(f"forgot {name}" + (" and its log" if purge else ""))
    if not listed.jobs:
        console.result(f"no jobs on {host}")
        return
    rows = [("NAME", "STATE", "STARTED", "DIR", "COMMAND") + (("GPU MEM",) if listed.gpu else ())]
    for j in listed.jobs:
        gpu = (f"{j.gpu_memory_mib / 1024:.1f} GB" if j.gpu_memory_mib else "-",) if listed.gpu else ()
        rows.append((j.name, status.job_state(j), ago(j.started), j.dir, shlex.join(j.argv)[:60]) + gpu)
    for line in table(rows):
        console.result(line)


@cli.command()
@click.argument("host", shell_complete=completion.complete_host)
@click.argument("job", shell_complete=completion.complete_job)
@click.option(
    "-f", "--follow", is_flag=True, help="Keep streaming until the job ends (reconnects if the network drops)."
)
@click.option("--tail", type=click.IntRange(min=0), help="Start with the last N lines.")
@click.option("--timeout", type=click.FloatRange(min=1), default=10.0, show_default=True, help=TIMEOUT_HELP)
def logs(host, job, follow, tail, timeout) -> None:
    """Print the output of JOB on HOST."""
    console = Console.for_terminal()
    if follow:
        _follow(host, job, console, timeout, tail=tail)
        return
    out = sys.stdout.buffer
    jobs.logs(
        host=host,
        name=job,
        tail=tail,
        follow=False,
        write=out.write,
        console=console,
        timeout=timeout,
        interactive=_interactive(),
    )
    out.flush()


@cli.command()
@click.argument("host", shell_complete=completion.complete_host)
@click.argument("job", shell_complete=completion.complete_job)
@click.option("--timeout", type=click.FloatRange(min=1), default=10.0, show_default=True, help=TIMEOUT_HELP)
def attach(host, job, timeout) -> None:
    """Open JOB's tmux session on HOST in this terminal.

    Detaching (Ctrl-B d) leaves the job running. Jobs started without tmux
    (setsid) have no session: follow them with `nbremote logs -f`.
    """
    argv = jobs.attach_argv(host=host, name=job, timeout=timeout, interactive=_interactive())
    sys.stdout.flush()
    os.execvp(argv[0], argv)


@cli.command(name="kill")
@click.argument("host", shell_complete=completion.complete_host)
@click.argument("job", shell_complete=completion.complete_job)
@click.option(
    "--signal",
    "signal_name",
    type=click.Choice(jobs.SIGNALS),
    default="TERM",
    show_default=True,
    help="Signal for the job's processes.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@click.option("--timeout", type=click.FloatRange(min=1), default=10.0, show_default=True, help=TIMEOUT_HELP)
def kill_command(host, job, signal_name, as_json, timeout) -> None:
    """Stop JOB on HOST (SIGTERM to its processes unless --signal says otherwise)."""
    from nbremote import status

    console = Console.for_terminal(json_mode=as_json)
    result, signalled = jobs.kill(
        host=host, name=job, signal_name=signal_name, timeout=timeout, interactive=_interactive()
    )
    if as_json:
        console.emit_json({"job": result.to_json(), "signalled": signalled})
    elif not signalled:
        console.note(f"job {job} had already ended: {status.job_state(result)}")
    elif result.state == "running":
        console.warn(
            f"sent SIG{signal_name} to job {job}; it is still running "
            f"(`nbremote kill {host} {job} --signal KILL` forces it)"
        )
    else:
        console.done(f"job {job} {status.job_state(result)}")


@cli.command(name="status")
@click.argument("hosts", nargs=-1, shell_complete=completion.complete_host)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--watch", is_flag=True, help="Refresh in place, with a short history of each GPU.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.5),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes with --watch.",
)
@click.option("--show-token", is_flag=True, help="Show the token in each forwarded Jupyter's URL (masked by default).")
@click.option("--timeout", type=click.FloatRange(min=1), default=5.0, show_default=True, help=TIMEOUT_HELP)
def status_command(hosts, as_json, watch, interval, show_token, timeout) -> None:
    """What every host is doing: load, memory, disk, GPUs, Jupyter, jobs.

    Without HOST: every host profile and every host with a session (this
    machine too when it has one); with neither, this machine. All hosts are
    asked at once: a dead one costs the timeout, not more.
    """
    from nbremote import status

    console = Console.for_terminal(json_mode=as_json)
    targets = list(hosts) or status.default_hosts()
    if not watch:
        results = status.gather(targets, timeout=timeout, show_token=show_token)
        if as_json:
            console.emit_json({"hosts": [r.to_json() for r in results]})
        else:
            for line in status.render(results):
                console.result(line)
        return
    history = status.History()
    drawn = 0
    try:
        while True:
            results = status.gather(targets, timeout=timeout, keep_masters=True, show_token=show_token)
            history.add(results)
            if as_json:
                console.emit_json({"hosts": [r.to_json() for r in results]})
            else:
                lines = status.render(results, history) + [f"  every {interval:g} s · Ctrl-C stops"]
                # Back to the top of the previous screen and draw over it.
                prefix = f"\x1b[{drawn}F" if drawn and sys.stdout.isatty() else ""
                click.echo(prefix + "\n".join(line + "\x1b[K" for line in lines) + "\x1b[J")
                drawn = len(lines)
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        status.close_masters(targets, timeout=timeout)


# --- host profiles -----------------------------------------------------------------


def _split_addresses(text: str) -> list[str]:
    return [a for a in text.replace(",", " ").split() if a]


@cli.command()
@click.argument("name")
@click.option(
    "--address",
    "addresses",
    multiple=True,
    metavar="ADDR",
    help="Address of the server, HOST or HOST:PORT; repeat it, best first (LAN, then WAN or VPN).",
)
@click.option("--user", help="User on the server [default: ssh's, your local user name].")
@click.option("--port", type=click.IntRange(1, 65535), help="ssh port for addresses without their own [default: 22].")
@click.option("--key", metavar="PATH", help="Private key to use [default: ~/.ssh/id_ed25519 etc., made if none].")
@click.option("--invite", metavar="LINE", help="The line `nbremote server invite` printed on the server.")
@click.option("--dir", "directory", help="Default --dir for `nbremote up NAME`.")
@click.option("--env", metavar="NAME_OR_PATH", help="Default --env for `nbremote up NAME`.")
@click.option("--lab/--notebook", "lab", default=None, help="Default UI for `nbremote up NAME`.")
@click.option("--local-port", type=click.IntRange(1, 65535), help="Default --port for `nbremote up NAME`.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--timeout", type=click.FloatRange(min=1), default=5.0, show_default=True, help=TIMEOUT_HELP)
def add(name, addresses, user, port, key, invite, directory, env, lab, local_port, as_json, timeout) -> None:
    """Set up NAME once: your key on the server, its host key pinned, a Host entry.

    \b
    nbremote add gpubox --address 192.168.1.112 --address 203.0.113.7:22222 --user me
    nbremote add gpubox --invite nbr1:me@192.168.1.112,203.0.113.7:22222#SHA256:…
    Makes an ed25519 key if you have none, installs it with one password login,
    and adds one Include line at the top of ~/.ssh/config, so `ssh gpubox`,
    scp and rsync work too. Asks for what is missing on a terminal.
    """
    from nbremote import hosts as host_profiles
    from nbremote import sshfiles

    console = Console.for_terminal(json_mode=as_json)
    interactive = _interactive()
    if interactive and not addresses and not invite:
        addresses = tuple(
            _split_addresses(click.prompt(f"Addresses of {name}, best first (LAN, then WAN or VPN)", err=True))
        )
        if user is None:
            user = click.prompt(f"User on {name}", default=os.environ.get("USER", ""), err=True) or None

    def confirm(question: str) -> bool:
        if interactive:
            return click.confirm(question, default=False, err=True)
        console.note(f"{question} Yes: not on a terminal, so trusted on first use.")
        return True

    up_defaults = profiles.UpDefaults(
        dir=directory, env=env, port=local_port, mode=None if lab is None else "lab" if lab else "notebook"
    )
    request = host_profiles.AddRequest(
        name=name, addresses=tuple(addresses), user=user, port=port, key=key, invite=invite, up=up_defaults
    )
    result = host_profiles.add(request, console, interactive=interactive, confirm=confirm, timeout=timeout)
    if as_json:
        console.emit_json(result.to_json())
        return
    console.done(f"added {name}: `nbremote up {name}`, or plain `ssh {name}`, scp and rsync")
    console.note(
        f"profile in {profiles.profiles_path()}; ~/.ssh/config includes {sshfiles.our_config_path()}"
        + (f" (your old one is in {result.include_backup})" if result.include_backup else "")
    )


@cli.command(name="hosts")
@click.option("--json", "as_json", is_flag=True, help="Print the profiles as JSON.")
def hosts_command(as_json) -> None:
    """List host profiles, when each address last answered, and the last path."""
    from nbremote import hosts as host_profiles

    console = Console.for_terminal(json_mode=as_json)
    rows = host_profiles.listing()
    if as_json:
        console.emit_json({"hosts": rows})
        return
    if not rows:
        console.result("no host profiles yet: `nbremote add NAME` makes one")
        return
    shown = [("NAME", "USER", "ADDRESSES", "LAST PATH")]
    for row in rows:
        last = row["last_path"]
        path = (
            "-"
            if last is None
            else (
                f"{last['kind']} {last['address']}"
                + (f", {last['rtt_ms']:.0f} ms" if last["rtt_ms"] is not None else "")
                + f" ({ago(last['when'])})"
            )
        )
        # Each way in, its kind and when it last answered (the relay's as "relay 127.0.0.1:N via …").
        ways = [
            f"{w['kind']} {w['address']}" + (f" ({ago(w['answered'])})" if w["answered"] else "") for w in row["ways"]
        ]
        shown.append((row["name"], row["user"] or "-", " · ".join(ways), path))
    for line in table(shown):
        console.result(line)


@cli.command()
@click.argument("name", shell_complete=completion.complete_profile)
def remove(name) -> None:
    """Forget host profile NAME: its Host entry and pinned host key go too."""
    from nbremote import hosts as host_profiles

    console = Console.for_terminal()
    host_profiles.remove(name)
    console.done(f"removed {name} (profile, Host entry, pinned host key); your key stays authorized on the server")


@cli.command(name="ssh", context_settings={"ignore_unknown_options": True})
@click.argument("name", shell_complete=completion.complete_profile)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--timeout", type=click.FloatRange(min=1), default=10.0, show_default=True, help=TIMEOUT_HELP)
def ssh_command(name, command, timeout) -> None:
    """Open a shell on host profile NAME (or run `-- CMD`) over its best address."""
    from nbremote import hosts as host_profiles

    console = Console.for_terminal()
    started = time.monotonic()
    argv, reached = host_profiles.ssh_argv(name, list(command), timeout=timeout, interactive=_interactive())
    if reached is not None:
        console.done(f"connected to {name} via {reached.describe()}", time.monotonic() - started)
    sys.stdout.flush()
    os.execvp(argv[0], argv)


@cli.group(name="config")
def config_group() -> None:
    """Where nbremote keeps its configuration."""


@config_group.command(name="path")
def config_path() -> None:
    """Print the path of the host profiles file (TOML)."""
    click.echo(str(profiles.profiles_path()))


# --- more ports ------------------------------------------------------------------------


@cli.command(name="forward")
@click.argument("host", shell_complete=completion.complete_host)
@click.argument("spec", required=False, metavar="[REMOTE_PORT[:LOCAL_PORT]]")
@click.option("--remove", is_flag=True, help="Take the forward to REMOTE_PORT away.")
@click.option(
    "--dir", "directory", help="The session (by its --dir) to add it to [default: the host profile's, else ~]."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--timeout", type=click.FloatRange(min=1), default=10.0, show_default=True, help=TIMEOUT_HELP)
def forward_command(host, spec, remove, directory, as_json, timeout) -> None:
    """Forward another port of HOST's loopback (TensorBoard, say).

    \b
    Without a port: list what your programs listen on there.
    With REMOTE_PORT[:LOCAL_PORT]: forward it (to the same local port when
    that is free); the keeper puts it back after a network drop, and
    `forward --remove` or `nbremote down` take it away.
    """
    console = Console.for_terminal(json_mode=as_json)
    from nbremote import forwards  # only this command needs it: kept out of the other commands' start-up

    port_pair = forwards.parse_spec(spec) if spec is not None else None
    if remove and port_pair is None:
        raise click.UsageError("--remove needs the REMOTE_PORT to stop forwarding")
    directory = directory if directory is not None else profiles.up_defaults(host).dir or "~"
    parse_target(host)  # a bad HOST is refused before anything is made for it
    # Sessions are remembered under HOST as typed (place.host): checked before any connection.
    record = forwards.session_for(host, directory) if port_pair is not None else sessions.find(host, directory)
    place = place_for(host, timeout=timeout, interactive=_interactive(), persist=True)
    if port_pair is None:
        rows = forwards.listening(place, record, timeout=timeout)
        if as_json:
            console.emit_json({"host": place.label, "listening": rows})
            return
        if not rows:
            console.result(f"none of your programs listens on {place.label}'s loopback")
        for row in rows:
            shown = f"→ localhost:{row['local_port']}" if row["local_port"] else ""
            pid = f"pid {row['pid']}" if row["pid"] else ""
            console.result(f"{row['port']:>5}  {pid:<10} {row['command'][:60]:<60} {shown}".rstrip())
        return
    assert record is not None
    remote, local = port_pair
    if remove:
        gone = forwards.remove(place, record, remote, local)
        if as_json:
            console.emit_json(gone.to_json())
            return
        console.done(f"localhost:{gone.local_port} → {place.label}:{remote} removed")
        return
    added = forwards.add(place, record, remote, local, timeout=timeout)
    if as_json:
        console.emit_json(added.to_json())
        return
    console.done(f"localhost:{added.local_port} → {place.label}:{remote}", added.seconds)
    console.result(f"  http://127.0.0.1:{added.local_port}/")


# --- kernels for a local editor ----------------------------------------------------------


@cli.group(name="kernels")
def kernels_group() -> None:
    """Kernels that run on HOST, for this laptop's Jupyter or editor.

    A kernel spec on this laptop whose kernels run on HOST, reached through
    nbremote's ssh connection and healed after a network drop like `up`'s:
    local JupyterLab, `jupyter console`, VS Code and PyCharm pick it.
    """


@kernels_group.command(name="install")
@click.argument("host", shell_complete=completion.complete_host)
@click.option(
    "--env",
    metavar="NAME_OR_PATH",
    help="Conda environment name, or venv/conda path, to run the kernel in "
    "[default: python3 on the server's login PATH].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the kernel spec as JSON.")
@click.option("--timeout", type=click.FloatRange(min=1), default=10.0, show_default=True, help=TIMEOUT_HELP)
def kernels_install(host, env, as_json, timeout) -> None:
    """Add a kernel spec for HOST (checks that ipykernel is there first).

    Local Jupyter, `jupyter console --kernel NAME`, VS Code and PyCharm list it
    like any kernel; each kernel started from it runs on HOST.
    """
    console = Console.for_terminal(json_mode=as_json)
    began = time.monotonic()
    from nbremote import kernels  # only this command needs it: kept out of the other commands' start-up

    spec = kernels.install(host=host, env=env, timeout=timeout, interactive=_interactive())
    if as_json:
        console.emit_json(spec.to_json())
        return
    python = f" ({spec.python} on {spec.host})" if spec.python else ""
    console.done(f'kernel {spec.name} installed: "{spec.display_name}"{python}', time.monotonic() - began)
    console.result(f"  {spec.path / 'kernel.json'}")
    console.note(f"`jupyter console --kernel {spec.name}` uses it; so do JupyterLab, VS Code and PyCharm.")


@kernels_group.command(name="remove")
@click.argument("host", shell_complete=completion.complete_host)
@click.option("--env", metavar="NAME_OR_PATH", help="The environment the kernel spec was installed with.")
@click.option("--json", "as_json", is_flag=True, help="Print the removed kernel spec as JSON.")
def kernels_remove(host, env, as_json) -> None:
    """Remove HOST's kernel spec; kernels started from it run until they are stopped."""
    console = Console.for_terminal(json_mode=as_json)
    from nbremote import kernels  # only this command needs it: kept out of the other commands' start-up

    spec = kernels.remove(host=host, env=env)
    if as_json:
        console.emit_json(spec.to_json())
        return
    console.done(f"kernel {spec.name} removed")


@kernels_group.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def kernels_ls(as_json) -> None:
    """The kernel specs nbremote installed on this laptop."""
    console = Console.for_terminal(json_mode=as_json)
    from nbremote import kernels  # only this command needs it: kept out of the other commands' start-up

    specs = kernels.installed()
    if as_json:
        console.emit_json([spec.to_json() for spec in specs])
        return
    if not specs:
        console.note("no nbremote kernels; `nbremote kernels install HOST` adds one")
    for spec in specs:
        console.result(f"{spec.name}  {spec.display_name}")


# --- the laptop itself: shell completion, doctor ---------------------------------------


@cli.command(name="completion")
@click.argument("shell", type=click.Choice(completion.SHELLS))
def completion_command(shell) -> None:
    """Print the script that makes SHELL (bash, zsh or fish) complete nbremote.

    \b
    eval "$(nbremote completion bash)"     in ~/.bashrc
    eval "$(nbremote completion zsh)"      in ~/.zshrc, after compinit
    nbremote completion fish > ~/.config/fish/completions/nbremote.fish
    Completes commands, options, host names (profiles and ~/.ssh/config) and the
    job names that run, jobs and status last saw on a host; it never connects.
    """
    click.echo(completion.script(cli, shell), nl=False)


@cli.command(name="doctor")
@click.argument("hosts", nargs=-1, metavar="[HOST]...", shell_complete=completion.complete_host)
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@click.option("--timeout", type=click.FloatRange(min=1), default=5.0, show_default=True, help=TIMEOUT_HELP)
def doctor_command(hosts, as_json, timeout) -> None:
    """Check this laptop and each host, with the fix for anything wrong.

    OpenSSH and its control sockets, a key, the profiles file, the Include in
    ~/.ssh/config; then each HOST (without HOST: every profile), all at once:
    a key login (never a prompt) and the agent answering. Exit 1 on any fail.
    """
    from nbremote import doctor
    from nbremote.verdicts import check_lines, summary

    console = Console.for_terminal(json_mode=as_json)
    with console.progress("checking"):
        rows = doctor.diagnose(list(hosts), timeout=timeout)
    counts = summary(rows)
    if as_json:
        console.emit_json({"checks": [r.to_json() for r in rows], "summary": counts})
    else:
        for line in check_lines(rows):
            console.result(line)
        console.result(f"{counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail")
    if counts["fail"]:
        sys.exit(ExitCode.ERROR)


def _render_error(exc: NbremoteError, as_json: bool) -> None:
    if as_json:
        Console(json_mode=True).emit_json(exc.to_json())
    click.echo(f"✗ {exc.message}", err=True)
    for line in exc.details:
        click.echo(f"  {line}", err=True)
    if exc.hint:
        click.echo(f"  hint: {exc.hint}", err=True)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="nbremote", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        code = ExitCode.USAGE if exc.exit_code == 2 else ExitCode.ERROR  # click uses no other code
        if "--json" in args:  # scripts get a JSON document for usage errors too
            Console(json_mode=True).emit_json(NbremoteError(exc.format_message(), exit_code=code).to_json())
        sys.exit(code)
    except (KeyboardInterrupt, click.Abort):
        interrupted()
    except NbremoteError as exc:
        if debug:
            raise
        _render_error(exc, "--json" in args)
        sys.exit(exc.exit_code)
    sys.exit(0)
