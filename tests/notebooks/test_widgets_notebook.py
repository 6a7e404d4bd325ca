"""The widgets notebook runs top to bottom in a real Jupyter kernel (nbclient), and the
widget state it saves holds the fednb widgets."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).parent


def widget_classes(nb: nbformat.NotebookNode) -> set[str]:
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    return {c for model in state.values() for c in model.get("state", {}).get("_dom_classes", [])}


def test_the_widgets_notebook_runs_and_saves_the_fednb_widgets(tmp_path: Path) -> None:
    nb = nbformat.read(HERE / "widgets.ipynb", as_version=4)
    NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        store_widget_state=True,
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert {"fednb-inbox", "fednb-budget-meter", "fednb-results-viewer"} <= widget_classes(nb)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "class='fednb-request'" in html and "class='fednb-history'" in html
    nbformat.write(nb, tmp_path / "widgets.executed.ipynb")  # inspectable after a failure
