"""Sealed-bid second-price (Vickrey) auction: the app logic the replicas run.

Requests (``request["body"]``; ``request["client"]`` is the authenticated client id):

- ``{"op": "bid", "amount": N, "name": "..."}`` — place or raise a sealed bid (integer > 0)
  while the lot is open; reply ``{"accepted": true}``. Only the bidder and the replicas ever
  see the amount (the request is sealed to the application key).
- ``{"op": "close"}`` — close the lot (the first client that opened it, i.e. sent ``open``,
  may close it); reply ``{"winner", "name", "price"}``.
- ``{"op": "open", "lot": "..."}`` — open a lot (once); reply ``{"opened": lot}``.
- ``{"op": "result"}`` — after the close: ``{"winner", "name", "price"}``.

Second-price rule: the highest bid wins and pays the second-highest bid (its own bid when it
is the only one); ties go to the smaller client id. After the close the bids are erased from
the state: only the winner and the price remain. Deterministic: no clock, no randomness, no
I/O.
"""


class AppRefused(Exception):
    """Refuse one request (the state is unchanged)."""


def init():
    return {"lot": None, "seller": None, "open": False, "bids": {}, "names": {}, "result": None}


def handle(state, request):
    client, body = request["client"], request["body"]
    if not isinstance(body, dict):
        raise AppRefused("requests are JSON objects")
    op = body.get("op")
    if op == "open":
        if state["lot"] is not None:
            raise AppRefused("the lot is already open")
        lot = body.get("lot")
        if not isinstance(lot, str) or not 0 < len(lot) <= 64:
            raise AppRefused("lot must be a name of 1..64 characters")
        state = {**state, "lot": lot, "seller": client, "open": True}
        return state, {"opened": lot}
    if op == "bid":
        if not state["open"]:
            raise AppRefused("the lot is not open")
        amount, name = body.get("amount"), body.get("name", "")
        if type(amount) is not int or not 0 < amount < 2**53:
            raise AppRefused("amount must be a positive integer")
        if client == state["seller"]:
            raise AppRefused("the seller does not bid")
        if not isinstance(name, str) or len(name) > 64:
            raise AppRefused("name must be at most 64 characters")
        bids = {**state["bids"], client: max(amount, state["bids"].get(client, 0))}
        names = {**state["names"], client: name}
        return {**state, "bids": bids, "names": names}, {"accepted": True}
    if op == "close":
        if not state["open"]:
            raise AppRefused("the lot is not open")
        if client != state["seller"]:
            raise AppRefused("only the seller closes the lot")
        ranked = sorted(state["bids"].items(), key=lambda kv: (-kv[1], kv[0]))
        if not ranked:
            result = {"winner": None, "name": None, "price": None}
        else:
            winner, top = ranked[0]
            price = ranked[1][1] if len(ranked) > 1 else top
            result = {"winner": winner, "name": state["names"].get(winner, ""), "price": price}
        return {**state, "open": False, "bids": {}, "names": {}, "result": result}, result
    if op == "result":
        if state["result"] is None:
            raise AppRefused("the lot is not closed yet")
        return state, state["result"]
    raise AppRefused("unknown op")
