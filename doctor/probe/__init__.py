"""The runtime probe: run a training script for a few steps under PyTorch's global hooks and judge the run.

Modules: ``runner`` (spawn, stream, stop, collect), ``child`` and ``hooks`` (the instrumented child
process), ``stream`` (the event channel), ``trace`` (what was observed), ``checks`` (the check contract;
the checks themselves live in ``rules/runtime``), ``report`` (text and JSON), ``command`` (the CLI).
Nothing here imports torch in the parent process.
"""
