"""Why an image was assigned to its character, from the identification record the ingest keeps
in its provenance (`vision.classify.identification_record`), for the single-image views.

Records written before scores were kept hold only the identifier and its answer; a crop that
came from a labelled cluster says so (`cluster_id`), since a person decided, not a model.
"""

from __future__ import annotations

from typing import Any

METHODS = {"reference": "reference match", "vlm": "VLM"}


def why_assigned(provenance: Any) -> dict[str, Any] | None:
    """What the view shows, or None when the provenance has no identification record."""
    if not isinstance(provenance, dict):
        return None
    record = provenance.get("identification")
    cluster_id = provenance.get("cluster_id")
    if not isinstance(record, dict):
        record = {}
    if not record and not isinstance(cluster_id, int):
        return None
    threshold = _number(record.get("threshold"))
    return {
        "method": METHODS.get(record.get("method", "")),
        "identifier": _text(record.get("identifier")),
        "matcher": _text(record.get("matcher")),
        "threshold": threshold,
        "scores": _scores(record.get("scores"), threshold),
        "vlm": _text(record.get("vlm")),
        "vlm_answer": _text(record.get("vlm_answer")),
        "answer": _text(record.get("answer")),
        # Labelled by a person on the Clusters tab (or `clusters label`): no model named it.
        "cluster_id": cluster_id if isinstance(cluster_id, int) else None,
    }


def _scores(raw: Any, threshold: float | None) -> list[dict[str, Any]]:
    """Each candidate's match score, best first, and whether it reached the threshold."""
    if not isinstance(raw, dict):
        return []
    rows = [(slug, _number(score)) for slug, score in raw.items() if isinstance(slug, str)]
    return [
        {
            "character": slug,
            "score": score,
            "passes": threshold is not None and score >= threshold,
        }
        for slug, score in sorted(
            ((s, v) for s, v in rows if v is not None), key=lambda row: -row[1]
        )
    ]


def _number(value: Any) -> float | None:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if is_number else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
