"""The review of a held result, public: what every owner's desk shows before a result
leaves the hospital (the Inbox, the Panel console, the JupyterLab extension and
``fednb domain results show`` all draw the same one).

:func:`build_review` makes the review (plain JSON) from a decoded result, its request
and run, the previous released run of the same request and the domain's memorisation
check; :func:`fetch_review` and :func:`review_of` fetch all of that over HTTP with an
owner's token. The ``*_text`` and ``*_lines`` functions put a review into words, the
same words in every view. The model itself lives in ``fednb.client._review``.
"""

from fednb.client._review import (
    BINS,
    SMALL,
    Review,
    build_review,
    decode_result,
    epsilon_text,
    fetch_nearest,
    fetch_review,
    find_previous,
    fmt,
    nearest_lines,
    nearest_text,
    params_text,
    released_text,
    review_lines,
    review_of,
    summary,
    tensor_diff,
    tensor_review,
)

__all__ = [
    "BINS",
    "SMALL",
    "Review",
    "build_review",
    "decode_result",
    "epsilon_text",
    "fetch_nearest",
    "fetch_review",
    "find_previous",
    "fmt",
    "nearest_lines",
    "nearest_text",
    "params_text",
    "released_text",
    "review_lines",
    "review_of",
    "summary",
    "tensor_diff",
    "tensor_review",
]
