"""The coffee shop's order tool: it reads the order back (a real shop would send it to
the till here)."""

_ORDER = ("size", "roast", "coffeeDrink", "numberOfShots", "milkAmount", "sugarAmount")


def order_drink(profile_dir, **order):
    parts = [order[k] for k in ("size", "roast", "coffeeDrink") if order.get(k)]
    extras = [order[k] for k in ("numberOfShots", "milkAmount", "sugarAmount") if order.get(k)]
    text = "One " + " ".join(parts)
    if extras:
        text += " with " + " and ".join(extras)
    return {"order": {k: order[k] for k in _ORDER if order.get(k)},
            "say": f"{text}. Coming right up!"}
