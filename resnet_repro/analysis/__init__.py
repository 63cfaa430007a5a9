"""Analysis: from the runs' CSVs to the paper's figures, tables and claims.

- `results`: every run's rows as one pandas frame (`load_runs`), final metrics, picking runs, seeds.
- `tables`, `figures`, `claims`: Tables 2 and 6, Figs. 1/4/6 and the depth figure, the paper's claims checked.
- `inspection`: Fig. 7's layer responses and a run's predictions (they load final.pt and the test set).
- `evaluation`: a weights file tested on a dataset.
- `report`: what `run` prints and draws when its runs end.
- `cli`: `python -m resnet_repro.analysis` and its commands.
"""

from resnet_repro.analysis.claims import claims_table
from resnet_repro.analysis.cli import draw
from resnet_repro.analysis.results import CannotDraw, compare, final_metrics, load_runs, seed_summary

__all__ = ["CannotDraw", "claims_table", "compare", "draw", "final_metrics", "load_runs", "seed_summary"]
