"""batch-independence (recipe): one sample's output does not depend on the other samples of the batch."""

from __future__ import annotations

from doctor.core.page import Sections, number
from doctor.probe.checks import FAIL, PASS, RuntimeCheck, Skip, fmt, result
from doctor.probe.trace import ProbeRun

CHECK = RuntimeCheck(
    name="batch-independence",
    code="DP120",
    summary="Recipe: one sample's output gets no gradient from the other samples' inputs.",
    recipe=True,
)

#: Exact independence leaves exactly zero gradient on other samples; one part in a million is float noise.
LEAK = 1e-6


PAGE = Sections(
    why=f"""
        Karpathy's "use backprop to chart dependencies": the output for one sample must not depend on the other
        samples of the batch; when it does, the samples are mixed — a softmax or normalisation over the batch
        dimension, a `view`/`reshape` where a `transpose`/`permute` was meant, a reduction over the wrong axis.
        With `--recipe batch-independence`, at the first optimizer step the top-level model is called again on
        the first batch, in eval mode, and the gradient of one sample's output (sample 1, summed) is taken with
        respect to the input (for token ids, the output of the `nn.Embedding` that reads them). The check
        measures the share of that gradient's norm that lands on other samples, along the first dimension the
        input and the output share (the batch) — and the next shared one if that mixes (a sequence-first
        layout, where dimension 0 is time). It fails when more than {number(LEAK)} reaches other samples along every
        shared dimension tried.

        Cost: one extra forward pass and one or two backward passes, once, inside the normal run.

        What to do: check the `dim` of every softmax, reduction and normalisation, and every `view`/`reshape`
        that changes the batch layout (use `permute`/`transpose` to move dimensions).
    """,
    known_problems="""
        Batch norm in train mode mixes samples by design (the known exception): the experiment runs the model
        in eval mode, where batch norm uses its running statistics, and says so when the model has batch norm
        layers. Skips when no output dimension lines up with the input (a flattened output such as an RNN
        language model's (T·B, V)), and for token inputs without an embedding module.
    """,
    bad="""
        def forward(self, x):                   # x: (B, T, F), the GRU is sequence-first
            b, t, f = x.shape
            out, _ = self.rnn(x.view(t, b, f))  # reinterprets memory: samples mixed
            return self.head(out[-1])
    """,
    good="""
        def forward(self, x):
            out, _ = self.rnn(x.transpose(0, 1))
            return self.head(out[-1])
    """,
)


def evaluate(run: ProbeRun):
    ex = run.experiments.get(CHECK.name) or run.experiments.get("*")
    if ex is None:
        raise Skip("the experiment did not run (no step, or the model was not seen before the first step)")
    if ex.get("skipped"):
        raise Skip(str(ex["skipped"]))
    dims = [d for d in ex.get("dims") or [] if d.get("leak") is not None]
    if not dims:
        raise Skip("the output does not depend on the input at all (see input-independent)", ex)
    bn = " (batch norm evaluated in eval mode: in train mode it mixes samples by design)" if ex.get("batchnorm_train") else ""
    where = ex.get("measured_at", "input")
    ok = [d for d in dims if d["leak"] < LEAK]
    if ok:
        d = ok[0]
        layout = "" if d["dim"] == 0 else f" (batch taken as dimension {d['dim']}: dimension 0 mixes, a sequence-first layout)"
        return result(CHECK, PASS, f"sample {d['sample']}'s output has no gradient on other samples' {where}{layout}{bn}", ex)
    d = dims[0]
    return result(CHECK, FAIL, f"the gradient of sample {d['sample']}'s output reaches the other samples' {where}: "
                  f"{d['leak']:.0%} of its norm lands outside sample {d['sample']} along dimension {d['dim']} — samples "
                  f"are mixed (softmax/normalisation over the batch, or view/reshape where transpose was meant){bn}", ex,
                  "Check the dim of every softmax, reduction and normalisation, and every view/reshape that changes "
                  "the batch layout (use permute/transpose to move dimensions).")
