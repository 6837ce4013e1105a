"""The REST error a stand-in operation raises, rendered by the HTTP layer as-is."""

from __future__ import annotations

from typing import Any


class RequestError(Exception):
    """An HTTP error with the JSON ``detail`` the real API would return.

    ``status`` 422 carries FastAPI's list shape (``[{"loc", "msg", "type"}]``); other
    statuses carry ``{"status": <code word>, "message": <text>}`` like the 401 body.
    """

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail

    @classmethod
    def missing(cls, *fields: str, where: str = "body") -> RequestError:
        return cls(
            422,
            [{"loc": [where, name], "msg": "Field required", "type": "missing"} for name in fields],
        )

    @classmethod
    def invalid(cls, loc: list[str], message: str) -> RequestError:
        return cls(422, [{"loc": loc, "msg": message, "type": "value_error"}])

    @classmethod
    def not_found(cls, what: str, ident: str) -> RequestError:
        return cls(404, {"status": f"{what}_not_found", "message": f"{what} {ident} not found"})
