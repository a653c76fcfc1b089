"""Trains the tiny test VLM; launched by tests/test_train.py under `accelerate launch` (2 processes)."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _vltiny as T  # noqa: E402
from accelerate import PartialState  # noqa: E402

from vlkit.specs import ParamGroup, TrainSpec  # noqa: E402
from vlkit.train import train  # noqa: E402

out = Path(sys.argv[1])
m = T.model()
spec = TrainSpec(groups=(ParamGroup("connector", 1e-3), ParamGroup("llm", 1e-3)), steps=3, batch_size=2,
                 mixed_precision="no", progress=False)
r = train(m, T.ColorDataset(16), spec, output_dir=out, processor=T.processor(m))
state = PartialState()
w = m.connector.proj.weight.detach()
(out / f"rank{state.process_index}.json").write_text(json.dumps(
    {"world": state.num_processes, "losses": r.losses, "w_sum": float(w.sum()), "w_first": float(w.flatten()[0])}))
