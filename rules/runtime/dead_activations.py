"""dead-activations: ReLU units that never fire, and saturated tanh/sigmoid units."""

from __future__ import annotations

from doctor.core.page import Sections, number
from doctor.probe.checks import FAIL, PASS, WARN, RuntimeCheck, Skip, result
from doctor.probe.trace import ProbeRun

CHECK = RuntimeCheck(
    name="dead-activations",
    code="DP107",
    summary="ReLU-family units fire on some inputs and tanh/sigmoid units are not saturated.",
)

#: A quarter of a layer's units never firing over several batches is lost capacity worth a look.
DEAD_WARN = 0.25
#: More than half dead: the layer is mostly switched off.
DEAD_FAIL = 0.5
#: Half of the outputs in the flat region: the layer barely passes gradient.
SATURATED_WARN = 0.5


PAGE = Sections(
    why=f"""
        A ReLU unit that never fires passes no gradient to its incoming weights: it is dead and stays dead;
        a tanh or sigmoid unit stuck in its flat region passes almost none. On sampled steps the check looks
        at every `nn.ReLU`/`nn.ReLU6` module: which units (features, or channels of conv maps) were positive
        for at least one of up to 256 strided rows of the batch; a unit that never fired over all sampled
        batches is dead. For `nn.Tanh`/`nn.Hardtanh`/`nn.Sigmoid` modules it measures the share of a strided
        sample of 4096 outputs in the flat regions (|tanh| > 0.99, sigmoid < 0.01 or > 0.99). It warns when
        more than {number(DEAD_WARN * 100)}% of a layer's units are dead and fails above {number(DEAD_FAIL * 100)}%, and warns when
        a saturating layer has more than {number(SATURATED_WARN * 100)}% of its outputs in the flat region.

        What to do: lower the LR (dead ReLUs often follow one huge update), check the init and the bias of
        the layer before (a negative bias shift kills units), normalise inputs, use LeakyReLU/GELU, or add
        normalisation before saturating activations.
    """,
    known_problems="""
        Only activation modules are seen: activations applied functionally (`F.relu`, `torch.tanh`) are not,
        nor those inside a `torch.compile`d region (the check says so when it skips).
        A unit is judged over the sampled batches of a short probe: units that fire only on rare inputs can
        be counted as dead, and layers sparse by design (a ReLU after a mask) can warn.
    """,
    bad="""
        layer = nn.Linear(256, 256)
        nn.init.constant_(layer.bias, -10.0)   # every pre-activation negative: the ReLU never fires
        block = nn.Sequential(layer, nn.ReLU())
    """,
    good="""
        layer = nn.Linear(256, 256)            # default init: about half the units fire
        block = nn.Sequential(layer, nn.ReLU())
    """,
)


def evaluate(run: ProbeRun):
    layers: dict[str, dict] = {}
    for s in run.sampled_steps():
        for name, st in s.activations.items():
            layers[name] = {**layers.get(name, {}), **st, "last_step": s.step}  # dead_units is cumulative: keep the last
            if "saturated" in st:
                layers[name].setdefault("_sat", []).append(st["saturated"])
    if not layers:
        if run.compiled:
            raise Skip("the model is torch.compile'd: activations inside the compiled region are not observed")
        raise Skip("no ReLU, Tanh or Sigmoid module ran on a sampled step")
    per_layer, fails, warns = {}, [], []
    for name, st in layers.items():
        if "dead_units" in st and st.get("units"):
            frac = st["dead_units"] / st["units"]
            per_layer[name] = {"type": st["type"], "dead_fraction": frac, "dead_units": st["dead_units"], "units": st["units"]}
            if frac > DEAD_FAIL:
                fails.append(f"{name}: {frac:.0%} of {st['units']} units never fire")
            elif frac > DEAD_WARN:
                warns.append(f"{name}: {frac:.0%} of {st['units']} units never fire")
        elif "_sat" in st:
            sat = sum(st["_sat"]) / len(st["_sat"])
            per_layer[name] = {"type": st["type"], "saturated_fraction": sat}
            if sat > SATURATED_WARN:
                warns.append(f"{name} ({st['type']}): {sat:.0%} of outputs saturated")
    evidence = {"layers": per_layer}
    if fails or warns:
        return result(CHECK, FAIL if fails else WARN, "; ".join(fails + warns), evidence,
                      "Lower the LR, fix the init/bias of the layer before, normalise inputs, or use LeakyReLU/GELU; "
                      "put normalisation before tanh/sigmoid.")
    dead = [v["dead_fraction"] for v in per_layer.values() if "dead_fraction" in v]
    worst = f", worst {max(dead):.0%} dead" if dead else ""
    return result(CHECK, PASS, f"{len(per_layer)} activation layer(s) checked{worst}", evidence)
