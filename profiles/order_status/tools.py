"""Tools of the order-status demo agent."""

from __future__ import annotations

import json
from pathlib import Path

_SAY = {
    "shipped": "Order {id} has shipped with {carrier} and should arrive on {expected_delivery}.",
    "delivered": "Order {id} was delivered on {delivered_on}.",
    "processing": "Order {id} is processing and should ship {expected_ship}.",
    "cancelled": "Order {id} was cancelled because {reason}.",
}


def get_order_status(order_id: str, profile_dir: Path) -> dict:
    orders = json.loads((Path(profile_dir) / "orders.json").read_text())
    order = orders.get(order_id)
    if order is None:
        return {
            "order_id": order_id,
            "status": "not found",
            "say": f"I couldn't find an order with the number {' '.join(order_id)}.",
        }
    say = _SAY[order["status"]].format(id=" ".join(order_id), **order)
    return {"order_id": order_id, **order, "say": say}
