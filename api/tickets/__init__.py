"""Tickets (工单, AE-01..03) and their lifecycle, and ending a rental (docs/api-tickets.md):
the tickets themselves in records.py, their moves in workflow.py, 退租 in rental_end.py, what
they share (the ticket's answer) in shaping.py.

Thin: scoping, the state table, dispatch and completion live in models/ticket_flow.py and
models/ticket_work.py, ending a rental in models/rental_end.py. A ticket outside the caller's
scope answers 404 as an unknown id does; a technician sees only the tickets dispatched to it.
"""

from __future__ import annotations

from aquafleet.api.routing import RouteTable
from aquafleet.api.tickets import records, rental_end, workflow

routes = RouteTable(
    "tickets",
    "Tickets (工单, AE-01..03): the seed's workflow 创建 审核 派单 正在处理 等待回应 完成, "
    "dispatch by hierarchy or distance, completion's domain work, ratings "
    "(docs/api-tickets.md).",
).include(records.routes, workflow.routes, rental_end.routes)

__all__ = ["routes"]
