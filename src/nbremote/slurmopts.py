"""Batch options for Slurm: a profile's defaults and `--slurm "…"`, checked on the laptop.

Every option becomes `--name=value` (or a bare `--name`) before it leaves, so
the agent passes a list to sbatch and nothing on the way is a shell. Only the
options that ask for resources or bill them are accepted: the ones nbremote
sets itself (output file, working directory, job name) or that would change
what sbatch answers (--wrap, --parsable, --array, --wait…) are refused with a
message naming them.
"""

from __future__ import annotations

import shlex

from nbremote.errors import ExitCode, NbremoteError

# long name -> takes a value
OPTIONS = {
    "partition": True,
    "time": True,
    "gres": True,
    "gpus": True,
    "gpus-per-node": True,
    "gpus-per-task": True,
    "cpus-per-gpu": True,
    "mem-per-gpu": True,
    "cpus-per-task": True,
    "mem": True,
    "mem-per-cpu": True,
    "account": True,
    "qos": True,
    "constraint": True,
    "nodelist": True,
    "exclude": True,
    "reservation": True,
    "nodes": True,
    "ntasks": True,
    "ntasks-per-node": True,
    "licenses": True,
    "comment": True,
    "time-min": True,
    "begin": True,
    "nice": True,
    "tmp": True,
    "cluster": True,
    "clusters": True,
    "signal": True,
    "mail-type": True,
    "mail-user": True,
    "export": True,
    "exclusive": False,
    "requeue": False,
    "no-requeue": False,
    "hint": True,
    "distribution": True,
    "switches": True,
    "prefer": True,
}
SHORT = {
    "p": "partition",
    "t": "time",
    "G": "gpus",
    "c": "cpus-per-task",
    "A": "account",
    "q": "qos",
    "C": "constraint",
    "w": "nodelist",
    "x": "exclude",
    "N": "nodes",
    "n": "ntasks",
    "L": "licenses",
}
OURS = {
    "output": "nbremote writes the job's output where `logs` finds it",
    "error": "nbremote keeps the job's errors with its output",
    "input": "a batch job started by nbremote reads nothing",
    "chdir": "use --dir",
    "job-name": "use --name (for run); Jupyter jobs are named nbremote-jupyter",
    "wrap": "nbremote writes the batch script",
    "parsable": "nbremote asks for it already",
    "array": "one nbremote job is one Slurm job",
    "wait": "nbremote waits for the job itself",
    "test-only": "it submits nothing",
    "hold": "a held job would never start",
    "open-mode": "nbremote appends to the output file it created",
    "uid": "jobs run as you",
    "gid": "jobs run as you",
}
SHORT_OURS = {
    "o": "output",
    "e": "error",
    "i": "input",
    "D": "chdir",
    "J": "job-name",
    "a": "array",
    "W": "wait",
    "H": "hold",
}

# Profile table [hosts.NAME.slurm]: key -> sbatch option.
PROFILE_KEYS = {
    "partition": "partition",
    "time": "time",
    "gres": "gres",
    "gpus": "gpus",
    "cpus": "cpus-per-task",
    "mem": "mem",
    "account": "account",
}
PROFILE_TABLE_KEYS = set(PROFILE_KEYS) | {"extra"}
SCHEDULERS = ("slurm",)


def _bad(word: str, why: str) -> NbremoteError:
    return NbremoteError(
        f"Slurm option {word!r} is not accepted: {why}",
        hint="pass sbatch options such as --partition=gpu --time=2:00:00 --gres=gpu:1 "
        "--cpus-per-task=4 --mem=16G --account=NAME",
        exit_code=ExitCode.USAGE,
    )


def _check_value(word: str, value: str) -> None:
    if value == "" or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise _bad(word, "its value is empty or has control characters")


def parse(text: str | list[str]) -> list[str]:
    """`--slurm "…"` (or a profile's list) as ['--name=value', …], or an error naming the bad word."""
    if isinstance(text, str):
        try:
            words = shlex.split(text)
        except ValueError as exc:
            raise NbremoteError(
                f"cannot read the Slurm options {text!r}: {exc}",
                hint='quote the whole list once: --slurm "--gres=gpu:1 --time=1:00:00"',
                exit_code=ExitCode.USAGE,
            ) from None
    else:
        words = list(text)
    out: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
        elif word.startswith("-") and len(word) >= 2:
            letter = word[1]
            if letter in SHORT_OURS:
                raise _bad(word, f"nbremote sets --{SHORT_OURS[letter]} itself ({OURS[SHORT_OURS[letter]]})")
            if letter not in SHORT:
                raise _bad(word, "not an sbatch option nbremote passes on")
            name, value = SHORT[letter], word[2:]
            eq = "=" if value else ""
        else:
            raise _bad(word, "options start with '-' (a value goes after '=' or after its option)")
        if name in OURS:
            raise _bad(word, f"nbremote sets --{name} itself ({OURS[name]})")
        if name not in OPTIONS:
            raise _bad(word, "not an sbatch option nbremote passes on")
        if not OPTIONS[name]:
            if eq:
                raise _bad(word, f"--{name} takes no value")
            out.append(f"--{name}")
            continue
        if not eq:
            if i >= len(words) or words[i].startswith("-"):
                raise _bad(word, f"--{name} needs a value")
            value = words[i]
            i += 1
        _check_value(word, value)
        out.append(f"--{name}={value}")
    return out


def name_of(option: str) -> str:
    return option[2:].split("=", 1)[0]


def merge(defaults: list[str], overrides: list[str]) -> list[str]:
    """The profile's options with the command's replacing those of the same name."""
    replaced = {name_of(o) for o in overrides}
    return [o for o in defaults if name_of(o) not in replaced] + list(overrides)


def from_profile(table: dict[str, object]) -> list[str]:
    """[hosts.NAME.slurm] as options; ValueError(key, message) for a bad entry."""
    unknown = sorted(set(table) - PROFILE_TABLE_KEYS)
    if unknown:
        raise ValueError(unknown[0], f"unknown key {unknown[0]!r} (known: {', '.join(sorted(PROFILE_TABLE_KEYS))})")
    words = []
    for key, option in PROFILE_KEYS.items():
        value = table.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValueError(key, f"{key} must be a string or a number")
        words.append(f"--{option}={value}")
    extra = table.get("extra", [])
    if not isinstance(extra, list) or not all(isinstance(w, str) for w in extra):
        raise ValueError("extra", 'extra must be a list of sbatch options, e.g. ["--qos=high"]')
    try:
        return parse(words + extra)
    except NbremoteError as exc:
        key = next((k for k, o in PROFILE_KEYS.items() if f"--{o}=" in exc.message), "extra")
        raise ValueError(key, exc.message) from None
