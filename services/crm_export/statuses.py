"""The order in which a subscription's status may move: defined here once.

CRM export keeps the newest subscription state it has seen; a tie in Stripe's one-second
`created` is broken by the higher rank, and a terminal status is never left. `syncmesh verify`
judges Stripe's subscriptions against the CRM's contracts with the same table.
"""

from __future__ import annotations

#: Subscription statuses in the order a lifecycle moves through them; ties in `created` are
#: broken by the higher rank. Terminal ones can never be left.
SUBSCRIPTION_RANK = {
    "incomplete": 0,
    "trialing": 1,
    "active": 2,
    "paused": 3,
    "past_due": 4,
    "unpaid": 5,
    "incomplete_expired": 6,
    "canceled": 7,
}
TERMINAL_SUBSCRIPTION_STATUSES = frozenset({"canceled", "incomplete_expired"})
