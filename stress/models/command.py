"""``command:``: a black-box model run as an external program, one process per call.

For each call (``command_io.batch`` cases) the cases are written into a fresh temporary folder, the
command line is run with its placeholders filled in, and its output is read back (see
:mod:`stress.models.command_io` for the file formats). Placeholders:

``{input}``
    the case: a ``.nii.gz`` file (``input_format: nifti``) or a DICOM series folder (``dicom``); with
    ``batch > 1``, a folder holding one entry per case (``case-000000.nii.gz`` or ``case-000000/ct/``).
``{output}``
    what the command must write: ``prediction.json`` (``json``, any batch), ``mask.nii.gz`` or
    ``seg.dcm`` (``batch: 1``), or an existing folder to fill with ``case-000000.nii.gz`` /
    ``case-000000.dcm`` (``batch > 1``).
``{workdir}``
    the call's temporary folder (holds ``input/`` and ``output/``; free for scratch files).

The template is split into arguments with :func:`shlex.split` first and the placeholders are filled
into each argument afterwards, so paths with spaces stay one argument; no shell is involved (write
``sh -c '...'`` to get one). A program named by a relative path is taken from the scenario's folder,
which is also the working directory; the environment is inherited. The image leaves the run's device:
black boxes live on the host. A call that exits non-zero, runs past ``timeout_s`` (it is killed with
its whole process group) or writes no usable output fails its cases with a sentence in the results'
``error`` column; the run goes on (see docs/models-black-box.md for every sentence).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from stress.errors import StressError, did_you_mean
from stress.models import command_io
from stress.models.base import ADAPTERS, LoadedModel, Prediction, sha256_file
from stress.scenario.schema import CommandIO, ModelSection

PLACEHOLDERS = ("input", "output", "workdir")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
STDERR_TAIL = 65536  # bytes of standard error read back for the message


def parse_template(template: str, where: str, base_dir: Path) -> list[str]:
    """Split a command template into arguments and check it; the program is resolved to a full path.

    Raises:
        StressError: unbalanced quotes, an unknown placeholder, no ``{input}`` or ``{output}``, or a
            program that is neither on ``PATH`` nor a file.
    """
    try:
        args = shlex.split(template)
    except ValueError as exc:
        raise StressError(
            f"{where}.command: cannot split the command line: {exc} (expected shell-like quoting)"
        ) from None
    if not args:
        raise StressError(
            f"{where}.command: the command line is empty "
            "(expected e.g. 'python model.py {input} {output}')"
        )
    used = {name for arg in args for name in _PLACEHOLDER.findall(arg)}
    for name in sorted(used - set(PLACEHOLDERS)):
        raise StressError(
            f"{where}.command: unknown placeholder {{{name}}}{did_you_mean(name, PLACEHOLDERS)} "
            "(expected {input}, {output} or {workdir})"
        )
    for name in ("input", "output"):
        if name not in used:
            raise StressError(
                f"{where}.command: the command line has no {{{name}}} placeholder "
                "(expected e.g. 'python model.py {input} {output}')"
            )
    program = _resolve_program(args[0], base_dir)
    if program is None:
        raise StressError(
            f"{where}.command: cannot find the program '{args[0]}' (expected a program on PATH or an "
            "executable file; relative paths start at the scenario's folder)"
        )
    return [program, *args[1:]]


def _resolve_program(name: str, base_dir: Path) -> str | None:
    if os.sep in name or (os.altsep and os.altsep in name):
        path = Path(name).expanduser()
        path = path if path.is_absolute() else base_dir / path
        return str(path) if path.is_file() else None
    return shutil.which(name)


def fingerprint(section: ModelSection, args: list[str], base_dir: Path) -> dict[str, Any]:
    """The template, the I/O settings and the SHA-256 of each argument that names a file (program, script)."""
    files: dict[str, str] = {}
    for i, arg in enumerate(args):
        if _PLACEHOLDER.search(arg):
            continue
        path = Path(arg).expanduser()
        path = path if path.is_absolute() else base_dir / path
        if path.is_file():
            key = shlex.split(str(section.command))[0] if i == 0 else arg
            files[key] = sha256_file(path)
    return {
        "adapter": "command",
        "target": section.command,
        "command_io": section.command_io.model_dump(),
        "files_sha256": files,
    }


class CommandModel:
    """A :class:`~stress.models.base.Predictor` that runs an external program per call of cases."""

    def __init__(self, args: list[str], io: CommandIO, cwd: Path):
        self.args = args
        self.io = io
        self.cwd = cwd

    def predict(self, image: Tensor, spacing_mm: tuple[float, float, float]) -> Prediction:
        """Run the command on the batch, ``io.batch`` cases per call; failures are per case."""
        volumes = image.detach().to("cpu", torch.float32)
        results: list[command_io.Result] = []
        for start in range(0, volumes.shape[0], self.io.batch):
            results += self._call(volumes[start : start + self.io.batch], spacing_mm)
        # A normal tensor, not an inference tensor: LoadedModel.predict sets failed cases to NaN in place.
        with torch.inference_mode(False):
            scores = torch.tensor([p for p, _ in results], dtype=torch.float64)
        return Prediction(scores, tuple(e for _, e in results))

    def _call(self, volumes: Tensor, spacing_mm: tuple[float, float, float]) -> list[command_io.Result]:
        """One process for ``volumes`` (``(n, 1, D, H, W)``): write, run, read back."""
        n = volumes.shape[0]
        io = self.io
        with tempfile.TemporaryDirectory(prefix="phantom-stress-call-", ignore_cleanup_errors=True) as tmp:
            workdir = Path(tmp)
            entries = command_io.write_inputs(
                command_io.blind_batch(volumes, spacing_mm), io.input_format, workdir / "input"
            )
            out_folder = workdir / "output"
            out_folder.mkdir()
            output = command_io.output_path(io.output_format, out_folder, io.batch)
            values = {
                "input": entries[0] if io.batch == 1 else workdir / "input",
                "output": output,
                "workdir": workdir,
            }
            args = [_PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), a) for a in self.args]
            problem = run_command(args, self.cwd, io.timeout_s)
            if problem is not None:
                results = [command_io.failed(problem)] * n
            else:
                results = command_io.read_outputs(
                    io.output_format, output, n, io.batch, tuple(volumes.shape[2:])
                )
            # The temporary folder's name changes every call: keep error text reproducible.
            return [(p, None if e is None else e.replace(tmp, "{workdir}")) for p, e in results]


def run_command(args: list[str], cwd: Path, timeout_s: float) -> str | None:
    """Run ``args`` in ``cwd`` within ``timeout_s``; ``None`` when it exits with 0, else why it failed.

    The command runs in a new session; on timeout (or an interrupt of the run) its whole process group
    is killed. Its standard output is discarded; the last line of its standard error is the message.
    """
    with tempfile.TemporaryFile() as stderr:
        try:
            proc = subprocess.Popen(
                args,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        except OSError as exc:
            return f"command could not start: {type(exc).__name__}: {exc} (expected an executable program)"
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return (
                f"command timed out after {timeout_s:g} s (expected it to finish within command_io.timeout_s)"
            )
        except BaseException:  # Ctrl-C: the command is in its own session and did not get the signal
            _kill_group(proc)
            raise
        if code == 0:
            return None
        stderr.seek(max(0, stderr.seek(0, os.SEEK_END) - STDERR_TAIL))
        message = command_io.last_line(stderr.read().decode("utf-8", errors="replace"))
        said = f": {message}" if message else " and wrote nothing on stderr"
        if code < 0:
            return f"command was killed by signal {_signal_name(-code)}{said} (expected exit code 0)"
        return f"command exited with code {code}{said} (expected exit code 0)"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill a timed-out command and every process it started in its session, then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def load_command(section: ModelSection, device: torch.device, where: str, base_dir: Path) -> LoadedModel:
    """``command: "exe {input} {output}"``: a black box run per call of cases, files in and out."""
    if section.kwargs:
        raise StressError(
            f"{where}.kwargs: the command adapter takes no kwargs "
            "(expected arguments in the command line itself)"
        )
    args = parse_template(str(section.command), where, base_dir)
    model = CommandModel(args, section.command_io, base_dir)
    return LoadedModel(
        section.name, section.role, section.threshold, model, fingerprint(section, args, base_dir)
    )


ADAPTERS.register("command", load_command)
