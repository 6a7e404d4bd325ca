"""The Panel apps behind ``fednb dashboard``: the owner's console and a federation view.

The console (:func:`console_app`) holds no credential of its own: each browser session
logs in with an owner token, kept only in that session's Python objects. The server
binds to loopback unless told otherwise. The federation view opens a saved ``History``
(``History.save``) and needs no domain. Importing this module needs Panel (the ``ui``
extra).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import panel as pn

from fednb.client import is_loopback
from fednb.client.html import esc
from fednb.errors import InsecureSetting, InvalidInput
from fednb.scientist import History
from fednb.ui._models import ResultsModel
from fednb.ui._panel import console_app

__all__ = ["console_app", "federation_app", "serve"]


def federation_app(path: str | Path) -> Callable[[], pn.viewable.Viewable]:
    """A function building the federation view of the ``History`` saved at ``path``."""
    from bokeh.plotting import figure

    History.load(path)  # fail now, not in the browser, if it is not a saved History

    def make() -> pn.viewable.Viewable:
        model = ResultsModel(History.load(path))
        names = model.metric_names()
        metric = pn.widgets.Select(name="metric", options=names, value=model.default_metric())
        plot = pn.pane.Bokeh(sizing_mode="stretch_width")
        palette = ("#000000", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")

        def draw(*_a: Any) -> None:
            fig = figure(
                height=360,
                sizing_mode="stretch_width",
                x_axis_label="round",
                y_axis_label=metric.value or "",
                tools="pan,wheel_zoom,box_zoom,reset,hover,save",
            )
            for k, (name, values) in enumerate(model.series(metric.value).items() if metric.value else []):
                fig.line(
                    list(range(len(values))),
                    values,
                    legend_label=name,
                    line_width=3 if k == 0 else 1.5,
                    color=palette[k % len(palette)],
                )
            if 1 < model.history.num_rounds <= 30:
                fig.xaxis.ticker = list(range(model.history.num_rounds))
            if fig.legend:
                fig.legend.click_policy = "hide"
            plot.object = fig

        metric.param.watch(draw, "value")
        draw()
        return pn.Column(
            pn.pane.HTML(f"<h2>Federation</h2><div>{esc(path)}</div>"),
            metric,
            plot,
            pn.pane.HTML(model.summary_html()),
            sizing_mode="stretch_width",
        )

    return make


def serve(
    domain_url: str | None,
    *,
    address: str = "127.0.0.1",
    port: int = 5006,
    history: str | None = None,
    insecure: bool = False,
    show: bool = False,
    relay: str | None = None,
    relay_name: str | None = None,
    identity: str | None = None,
) -> None:
    """Serve the console (``/console``) and, given a saved history, ``/federation``; blocks.

    The console's domain is ``domain_url``, or ``relay_name`` behind ``relay``."""
    if relay is not None and (domain_url is not None or relay_name is None):
        raise InvalidInput("through a relay, give --relay URL and --relay-name NAME, and no --domain")
    if identity is not None and relay is None and domain_url is None:
        raise InvalidInput("--identity pins the console's domain: give --domain or --relay too")
    if domain_url is None and relay is None and history is None:
        raise InvalidInput(
            "give --domain URL (the owner console), --history DIR (a federation view), or both; "
            "for a domain behind a relay, --relay URL --relay-name NAME instead of --domain"
        )
    if history is not None and not is_loopback(address):
        raise InsecureSetting("the federation view has no login: serve it on loopback only")
    apps: dict[str, Any] = {}
    if domain_url is not None or relay is not None:
        apps["console"] = console_app(domain_url, insecure=insecure, relay=relay,
                                      relay_name=relay_name, identity=identity)
    if history is not None:
        apps["federation"] = federation_app(history)
    pn.config.nthreads = 4  # type: ignore[misc]  # callbacks call domains: keep a slow one off the loop
    hosts = [f"{address}:{port}"] + (
        [f"localhost:{port}", f"127.0.0.1:{port}"] if address == "127.0.0.1" else []
    )
    pn.serve(
        apps,
        address=address,
        port=port,
        allow_websocket_origin=hosts,
        show=show,
        threaded=False,
        title={"console": "fednb owner console", "federation": "fednb federation"},
        start=True,
        print_url=False,
    )
