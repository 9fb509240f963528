"""Ray job commands of the ``datacopilot`` CLI: ``submit`` (a YAML pipeline as a Ray job), ``status`` and ``stop``.
The work is in :mod:`datacopilot.jobs`; registered onto the main group by :func:`register_jobs`.

.. code-block:: console

    $ datacopilot submit pipeline.yaml --address http://head:8265   # streams the logs; exit 0 when it succeeded
    $ datacopilot status raysubmit_XYZ                # --address, RAY_API_SERVER_ADDRESS or RAY_ADDRESS
    $ datacopilot stop raysubmit_XYZ

Exit codes: 0 a job that succeeded (or a status or stop that worked), 1 a job that failed or was stopped, 2 an error
of datacopilot (no job server at the address, no such job, an upload over Ray's limit), 130 streaming interrupted
(the job keeps running).
"""

from __future__ import annotations

import click


def _address_option(f):
    return click.option("--address", "address", default=None, metavar="URL",
                        help="The Ray job server (the head's dashboard), e.g. http://HOST:8265; default: the "
                             "RAY_API_SERVER_ADDRESS environment variable, else RAY_ADDRESS (as Ray's job CLI).")(f)


def _finish(s) -> None:
    from datacopilot.jobs import describe

    for line in describe(s):
        click.echo(line)
    if s.status != "SUCCEEDED":
        click.get_current_context().exit(1)


@click.command()
@click.argument("spec", type=click.Path(exists=True, dir_okay=False))
@_address_option
@click.option("--out", "out", default=None, metavar="DIR",
              help="Output directory as the cluster sees it (overrides the spec's output.dir; a relative path is "
                   "made absolute here).")
@click.option("--resume", is_flag=True, help="Skip the input files a previous, interrupted run finished.")
@click.option("--runtime-env", "runtime_env", default=None, metavar="FILE|JSON",
              help="A Ray runtime_env (YAML or JSON file, or inline JSON) merged over datacopilot's: py_modules and "
                   "excludes are appended, env_vars merged, other keys (working_dir, pip, ...) replace.")
@click.option("--job-id", "job_id", default=None, help="The job's submission id (default: one Ray makes up).")
@click.option("--no-wait", "no_wait", is_flag=True, help="Print the job's id and return; do not stream its logs.")
def submit(spec: str, address: str | None, out: str | None, resume: bool, runtime_env: str | None,
           job_id: str | None, no_wait: bool) -> None:
    """Run the pipeline in the YAML (or JSON) file SPEC as a Ray job, stream its logs and exit with its outcome.

    The job gets the spec's directory as its working directory (relative paths resolve there; the output
    directory, caches and version-control folders are not uploaded) and this datacopilot package as a py_module;
    it runs `datacopilot run SPEC --ray auto` on the cluster. The cluster's Python needs datacopilot's
    dependencies, not datacopilot itself.
    """
    from datacopilot import jobs

    jobs.check_spec(spec)  # a typo is an error here, before the cluster is asked anything
    server = jobs.connect(address)
    job, command, out_dir = jobs.submit(server, spec, out=out, resume=resume,
                                        runtime_env=jobs.read_runtime_env(runtime_env), job_id=job_id)
    click.echo(f"submitted job {job} to {server.address}: {command}", err=True)
    click.echo(f"output: {out_dir}", err=True)
    if no_wait:
        click.echo(job)
        return
    _follow(server, job)


def _follow(server, job: str) -> None:
    from datacopilot import jobs

    try:
        final = jobs.follow(server, job, write=lambda text: click.echo(text, nl=False))
    except KeyboardInterrupt:
        click.echo(f"\nstopped following job {job}; it keeps running: datacopilot status {job} --follow, or "
                   f"datacopilot stop {job}", err=True)
        click.get_current_context().exit(130)
    _finish(final)


@click.command()
@click.argument("job")
@_address_option
@click.option("--json", "as_json", is_flag=True, help="Print the job's state as JSON.")
@click.option("--logs", is_flag=True, help="Also print the job's logs so far.")
@click.option("--follow", is_flag=True,
              help="Stream the job's logs until it ends and exit as submit does (0 when it succeeded).")
def status(job: str, address: str | None, as_json: bool, logs: bool, follow: bool) -> None:
    """The status of the Ray job JOB (PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED), its entrypoint and times."""
    from datacopilot import jobs

    server = jobs.connect(address)
    if follow:
        _follow(server, job)
        return
    s = jobs.state(server, job)
    if logs:
        click.echo(jobs.logs(server, job), nl=False)
    if as_json:
        click.echo(jobs.as_json(s))
        return
    for line in jobs.describe(s):
        click.echo(line)


@click.command()
@click.argument("job")
@_address_option
def stop(job: str, address: str | None) -> None:
    """Stop the Ray job JOB and wait until it has ended (its driver gets SIGTERM, then SIGKILL)."""
    from datacopilot import jobs

    server = jobs.connect(address)
    sent, s = jobs.stop(server, job)
    if not sent:
        click.echo(f"{job} had already ended: {s.status}")
        return
    for line in jobs.describe(s):
        click.echo(line)
    if not s.terminal:
        click.echo(f"{job} has not ended yet; see datacopilot status {job}", err=True)
        click.get_current_context().exit(1)


def register_jobs(group: click.Group) -> None:
    """Add ``submit``, ``status`` and ``stop`` to the main CLI group."""
    for cmd in (submit, status, stop):
        group.add_command(cmd)
